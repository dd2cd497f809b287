"""What every format's reader returns, and the size checks every reader makes before it allocates."""
import math
from dataclasses import dataclass, field
from typing import Any, Dict

import numpy as np

from ..errors import CheckpointError

# nn.Momentum names its accumulators 'moments.<parameter name>'; safetensors files use the same.
MOMENTS = "moments."
# More dimensions than any weight has; NumPy's own limit is 64.
MAX_DIMS = 16


@dataclass
class RawCheckpoint:
    """A file's contents as named in the file, before any layout or model is applied.

    ``optimizer`` is the PyTorch SGD ``state_dict`` for PyTorch files, and
    ``{parameter name: momentum array}`` for MindSpore and safetensors files.
    """
    path: str
    format: str
    tensors: Dict[str, np.ndarray]
    optimizer: Any = None
    scalars: Dict[str, Any] = field(default_factory=dict)


def one_line(text, limit=100):
    """``text`` on one line, cut to ``limit`` characters: a bad value is quoted by its prefix only."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checked_nbytes(path, key, shape, itemsize):
    """Bytes of a ``shape`` tensor, in Python integers (no wrap-around); bad shapes are refused."""
    if len(shape) > MAX_DIMS or any(not isinstance(d, int) or d < 0 for d in shape):
        raise CheckpointError(f"{path}: '{one_line(key, 60)}' has shape {one_line(shape, 60)}: "
                              f"dimensions must be {MAX_DIMS} or fewer non-negative integers")
    return math.prod(shape) * itemsize


def scalar_int(path, key, value):
    """An integer scalar the file stores (epoch, step) as an int; one line if it is not one."""
    try:
        flat = np.asarray(value).reshape(-1)
        if flat.size != 1:
            raise ValueError
        return int(flat[0])
    except (ValueError, TypeError, OverflowError):
        raise CheckpointError(f"{path}: '{key}' is {one_line(repr(value), 40)}, not an integer") from None


def contiguous(value):
    # np.ascontiguousarray would turn a 0-d num_batches_tracked into shape (1,).
    value = np.asarray(value)
    return value if value.flags.c_contiguous else value.copy(order="C")
