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


def decode(path, channels):
    """uint8 HWC array of an image file, as greyscale (1 channel) or RGB (3)."""
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(img)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{path}: cannot decode image: {err}") from None
    return arr[:, :, None] if arr.ndim == 2 else arr
