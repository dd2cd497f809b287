"""The discrete choices of a forward pass, so that float32 runs can replay float64's.

A ReLU network's gradient is piecewise: it depends on which side of zero every ReLU input
lies and on which input wins every max-pool window. A float32 pass rounds a few of ~10^7
ReLU inputs near zero, or a near-tie in a pool window, the other way from exact
arithmetic, and each such element moves the gradients upstream of it by ~1/sqrt(N) of
their size. The gradient and SGD checks therefore record these choices in PyTorch's
float64 pass and make both float32 backends replay them (docs/parity.md, finding 8).
This module holds the framework-free part: which input wins each max-pool window, and
the ReLU signs kept one bit each.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..plan import pool_pads


def pool_winners(x, pool):
    """Flat index into the padded (B, C, Hp * Wp) map of the winner of every pool window.

    ``x`` is the pool's input (B, C, H, W); ties go to the first window position, as in
    both frameworks' max-pool.
    """
    k, s = pool.kernel_size, pool.stride
    top, bottom, left, right = pool_pads(pool, *x.shape[2:])
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=-np.inf)
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    b, c, ho, wo = win.shape[:4]
    arg = win.reshape(b, c, ho, wo, k * k).argmax(-1)
    rows = np.arange(ho).reshape(-1, 1) * s + arg // k
    cols = np.arange(wo).reshape(1, -1) * s + arg % k
    return (rows * xp.shape[3] + cols).reshape(b, c, ho * wo)


class Signs:
    """Which inputs of one ReLU call were > 0, one bit each.

    A pass of SKNet-50 at 224 px, batch 8, has 125 M ReLU inputs: as NumPy booleans the
    ten steps' recorded signs held 1.3 GB, as bits 160 MB.
    """

    __slots__ = ("bits", "shape", "size")

    def __init__(self, x):
        positive = np.asarray(x) > 0
        self.bits, self.shape, self.size = np.packbits(positive, axis=None), positive.shape, positive.size

    def unpack(self, dtype=np.bool_):
        """The mask as an array of ``shape``: 1 where the input was > 0, else 0."""
        return np.unpackbits(self.bits, count=self.size).reshape(self.shape).astype(dtype, copy=False)
