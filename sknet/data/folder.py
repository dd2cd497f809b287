"""ImageNet-style folders: ``root/<split>/<class>/<image>``, classes in sorted order."""
import functools
import math
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


try:
    from . import _jpeg   # the optional C fast path (setup.py); PIL gives the same pixels without it
except ImportError:
    _jpeg = None

JPEG_MAGIC = b"\xff\xd8\xff"
# Reach of PIL's resampling filters in source pixels per unit of shrink (Lanczos, the widest, 3).
FILTER_REACH = 3


@functools.lru_cache(maxsize=None)
def resize_order():
    """The pass order under which the extension's resize gives this PIL's pixels, or None.

    Pillow 13 changed which of its two passes runs first for some sizes, and the order shows
    in the pixels; Pillow-SIMD's weights differ altogether. So rather than trust a version
    number, a few resizes of a fixed noise image are compared with PIL's, once per process;
    where neither order reproduces them (None), files are resized by PIL.
    """
    if _jpeg is None:
        return None
    rgb = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    # Down across (Pillow 13 goes down first on the first), a box, upscaling, grey, bilinear.
    cases = [(rgb, (20, 6), (0.0, 0.0, 24.0, 24.0), Image.BICUBIC),
             (rgb, (6, 20), (0.0, 0.0, 24.0, 24.0), Image.BICUBIC),
             (rgb, (30, 9), (1.5, 2.25, 22.0, 23.5), Image.BILINEAR),
             (rgb[:, :, :1], (19, 4), (0.0, 0.0, 24.0, 24.0), Image.BICUBIC)]
    for order in (1, 0):
        if all(_jpeg.resample(img.tobytes(), 24, 24, img.shape[2], box, size[0], size[1], resample, order, False)
               == Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).resize(size, resample, box=box).tobytes()
               for img, size, box, resample in cases):
            return order
    return None


def resized_bytes(data, width, height, channels, box, out_w, out_h, resample, flip=False):
    """PIL image: the extension's resize of packed uint8 pixels (PIL's ``resize(size, resample,
    box)``, its pixels), mirrored left to right with ``flip``; only where ``resize_order()`` is not None."""
    mode = _mode(channels)
    out = _jpeg.resample(data, width, height, channels, box, out_w, out_h, resample, resize_order(), flip)
    return Image.frombuffer(mode, (out_w, out_h), out, "raw", mode, 0, 1)


def _region(start, stop, out, limit):
    """The whole source pixels a resize of [start, stop) to ``out`` pixels reads, within [0, limit)."""
    reach = FILTER_REACH * max(1.0, (stop - start) / out) + 1
    return max(0, math.floor(start - reach)), min(limit, math.ceil(stop + reach))


class Encoded:
    """An image file not decoded yet: its size comes from the header, its pixels on demand.

    Only the pixels a crop needs are decoded: a JPEG's rows and iMCU columns around the crop
    (libjpeg-turbo's partial decompression, through the ``_jpeg`` extension when it is
    built), and a crop that is shrunk by 2x or more is decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's DCT scaling; ``Image.draft`` in PIL). The resize then reads the same pixels
    whichever way they were decoded: both paths cut the same rectangle out of the same
    decode (libjpeg's region decode gives a full decode's pixels) and resize it with the
    same box, so they give identical images; the extension's resize (bilinear, bicubic)
    reproduces PIL's, pixel for pixel. Which scale and rectangle are used depends only on the
    file's size and the crop, never on timing or process, so every worker and backend gets
    the same pixels.
    """

    def __init__(self, path, channels):
        self.path, self.channels, self.data, self.jpeg = path, channels, None, False
        if _jpeg is not None:
            try:
                with open(path, "rb") as f:
                    # Only a JPEG is read whole here; any other file is left to PIL's open.
                    data = f.read(len(JPEG_MAGIC))
                    data = data + f.read() if data == JPEG_MAGIC else None
            except OSError as err:
                raise DatasetError(f"{path}: cannot read image: {err}") from None
            if data is not None:
                try:
                    width, height, components = _jpeg.header(data)
                except ValueError as err:
                    raise DatasetError(f"{path}: cannot decode image: {err}") from None
                # libjpeg's greyscale output is the luma plane, PIL's convert("L") its own
                # weighting of RGB: a colour file read as greyscale (and CMYK) stays with PIL.
                if components == 1 or (components == 3 and channels == 3):
                    self.data, self.jpeg = data, True
                    self.shape = (height, width, channels)
                    return
        try:
            with Image.open(path) as img:
                width, height = img.size
                self.jpeg = img.format == "JPEG"
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise DatasetError(f"{path}: cannot decode image: {err}") from None
        self.shape = (height, width, channels)

    def array(self):
        if self.data is None:
            return decode(self.path, self.channels)
        return _array(self._decode(1, (0, 0) + self.shape[:2]))

    def _region_bytes(self, scale, rect):
        """Bytes of ``rect`` = (top, left, height, width) of the file decoded at 1/``scale`` (the C path)."""
        top, left, h, w = rect
        try:
            return _jpeg.region(self.data, scale, top, left, h, w, self.channels)
        except ValueError as err:
            raise DatasetError(f"{self.path}: cannot decode image: {err}") from None

    def _decode(self, scale, rect):
        """PIL image of ``rect`` = (top, left, height, width) of the file decoded at 1/``scale``."""
        top, left, h, w = rect
        mode = _mode(self.channels)
        if self.data is not None:
            return Image.frombuffer(mode, (w, h), self._region_bytes(scale, rect), "raw", mode, 0, 1)
        height, width = self.shape[:2]
        try:
            with Image.open(self.path) as img:
                if scale > 1:
                    # draft picks the largest s in (8, 4, 2) with size // requested >= s; for a
                    # request of size // s that quotient lies in [s, 2s), so it picks s itself.
                    img.draft(img.mode, (width // scale, height // scale))
                img = img if img.mode == mode else img.convert(mode)
                return img.crop((left, top, left + w, top + h))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise DatasetError(f"{self.path}: cannot decode image: {err}") from None

    def image(self, box, out_w, out_h, resample, flip=False):
        """PIL image: crop ``box`` = (top, left, height, width) resized to ``out_h`` x ``out_w``,
        mirrored left to right with ``flip``."""
        top, left, h, w = box
        # The largest DCT scale that still leaves the crop at least as large as the output on
        # both sides: the resize after it still shrinks, so it keeps no detail the scaling lost.
        scale = next(s for s in (8, 4, 2, 1) if s == 1 or (w >= s * out_w and h >= s * out_h))
        if not self.jpeg:
            scale = 1
        if scale == 1 and (h, w) == (out_h, out_w):
            img = self._decode(1, box)
        else:
            height, width = self.shape[:2]
            # libjpeg's scaled size rounds up; the box is exact in binary (scale is a power of 2).
            y0, y1 = _region(top / scale, (top + h) / scale, out_h, -(-height // scale))
            x0, x1 = _region(left / scale, (left + w) / scale, out_w, -(-width // scale))
            rect = (y0, x0, y1 - y0, x1 - x0)
            within = (left / scale - x0, top / scale - y0, (left + w) / scale - x0, (top + h) / scale - y0)
            if self.data is not None and resample in (Image.BILINEAR, Image.BICUBIC) and resize_order() is not None:
                # The extension's resize: PIL's pixels, flipped as it writes them.
                return resized_bytes(self._region_bytes(scale, rect), rect[3], rect[2], self.channels, within,
                                     out_w, out_h, resample, flip)
            img = self._decode(scale, rect).resize((out_w, out_h), resample, box=within)
        return img.transpose(Image.FLIP_LEFT_RIGHT) if flip else img

    def resized(self, box, out_w, out_h, resample):
        """uint8 HWC: crop ``box`` = (top, left, height, width) resized to ``out_h`` x ``out_w``."""
        return _array(self.image(box, out_w, out_h, resample))
