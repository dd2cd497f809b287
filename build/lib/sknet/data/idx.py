"""Reader for the IDX files of MNIST-style datasets (Fashion-MNIST as Debian installs it).

IDX: a big-endian header (two zero bytes, a type code, the number of dimensions, then
one uint32 per dimension) followed by the raw array. Files may be gzip-compressed.
"""
import gzip
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import SKNetError

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Split name -> file prefix; "test" and "val" both read the 10k test files.
SPLIT_PREFIX = {"train": "train", "test": "t10k", "t10k": "t10k", "val": "t10k"}
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DatasetError(SKNetError):
    """A dataset file or folder that is missing or cannot be read."""


def read_idx(path):
    """The array stored in one IDX file (``.gz`` or raw)."""
    path = Path(path)
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as err:
        raise DatasetError(f"{path}: cannot read: {getattr(err, 'strerror', None) or err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: holds {len(raw) - header} data bytes, header {shape} says {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_file(root, stem):
    """``root/stem`` or ``root/stem.gz``, whichever exists."""
    root = Path(root)
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DatasetError(f"{root}: no {stem}[.gz] (Fashion-MNIST: apt-get install dataset-fashion-mnist)")


@lru_cache(maxsize=4)
def load_split(root, split):
    """(images uint8 (N, H, W), labels int64 (N,)) of an MNIST-layout split."""
    if split not in SPLIT_PREFIX:
        raise DatasetError(f"{root}: unknown split '{split}' (choose from: {', '.join(SPLIT_PREFIX)})")
    prefix = SPLIT_PREFIX[split]
    images_path = find_file(root, f"{prefix}-images-idx3-ubyte")
    labels_path = find_file(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DatasetError(f"{images_path}: expected (N, H, W) images, got shape {images.shape}")
    if labels.shape != (images.shape[0],):
        raise DatasetError(f"{labels_path}: {labels.shape[0] if labels.ndim else 0} labels "
                           f"for {images.shape[0]} images in {images_path.name}")
    images.setflags(write=False)
    labels = labels.astype(np.int64)
    labels.setflags(write=False)
    return images, labels
