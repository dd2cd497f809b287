"""ImageNet-style folders: ``root/<split>/<class>/<image>``, classes in sorted order."""
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .idx import DatasetError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def scan(root, split):
    """(class names, [(path, label)]) of ``root/split``, both sorted, so every worker agrees."""
    top = Path(root) / split
    if not top.is_dir():
        raise DatasetError(f"{top}: no such folder (expected {Path(root)}/<split>/<class>/*.jpg)")
    classes = sorted(p.name for p in top.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{top}: no class folders")
    samples = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (top / name).rglob("*")
                       if p.suffix.lower() in EXTENSIONS and p.is_file())
        samples.extend((str(p), label) for p in files)
    if not samples:
        raise DatasetError(f"{top}: no images ({', '.join(EXTENSIONS)}) in its class folders")
    return classes, samples


def _mode(channels):
    return "L" if channels == 1 else "RGB"


def _array(img):
    arr = np.asarray(img)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode(path, channels):
    """uint8 HWC array of an image file, as greyscale (1 channel) or RGB (3)."""
    try:
        with Image.open(path) as img:
            # convert() copies even when the mode already matches: skip it then.
            arr = _array(img if img.mode == _mode(channels) else img.convert(_mode(channels)))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{path}: cannot decode image: {err}") from None
    return arr


class Encoded:
    """An image file not decoded yet: its size comes from the header, its pixels on demand.

    A crop that is shrunk by 2x or more is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
    scaling, ``Image.draft``), so a JPEG never decodes many more pixels than the crop keeps.
    Whether that happens depends only on the file's size and the crop, never on timing or
    process, so every worker and backend gets the same pixels.
    """

    def __init__(self, path, channels):
        self.path, self.channels = path, channels
        try:
            with Image.open(path) as img:
                width, height = img.size
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise DatasetError(f"{path}: cannot decode image: {err}") from None
        self.shape = (height, width, channels)

    def array(self):
        return decode(self.path, self.channels)

    def resized(self, box, out_w, out_h, resample):
        """uint8 HWC: crop ``box`` = (top, left, height, width) resized to ``out_h`` x ``out_w``."""
        top, left, h, w = box
        # The largest DCT scale that still leaves the crop at least as large as the output on
        # both sides: the resize after it still shrinks, so it keeps no detail the scaling lost.
        scale = next(s for s in (8, 4, 2, 1) if s == 1 or (w >= s * out_w and h >= s * out_h))
        height, width = self.shape[:2]
        try:
            with Image.open(self.path) as img:
                if scale > 1 and img.format == "JPEG":
                    # draft picks the largest s in (8, 4, 2) with size // requested >= s; for a
                    # request of size // s that quotient lies in [s, 2s), so it picks s itself.
                    img.draft(img.mode, (width // scale, height // scale))
                else:
                    scale = 1
                img = img if img.mode == _mode(self.channels) else img.convert(_mode(self.channels))
                if scale == 1 and (h, w) == (out_h, out_w):
                    out = img.crop((left, top, left + w, top + h))
                else:
                    out = img.resize((out_w, out_h), resample,
                                     box=(left / scale, top / scale, (left + w) / scale, (top + h) / scale))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise DatasetError(f"{self.path}: cannot decode image: {err}") from None
        return _array(out)
