"""Read the SK units' selection weights out of a MindSpore SKNet: PYNATIVE mode only.

Forward hooks on each unit's attention cell (its output: the selection logits, whose
softmax over the branch axis is the weights) and on its branch cells collect what one
pass computed; the cells themselves hold no recording state. Hooks run only in PYNATIVE
(eager) execution, so ``capture`` switches the context there for the call and back
afterwards if the caller was in GRAPH mode.
"""
from contextlib import contextmanager

import mindspore as ms
import numpy as np
from mindspore import ops

from sknet.attention import Capture, hooked
from sknet.attention import sk_cells as find_sk_cells
from sknet.errors import SKNetError

from .layers import SelectiveKernel


def sk_cells(net):
    """``{unit path: SelectiveKernel}`` for every SK unit the spec's tree lists, in build order."""
    return find_sk_cells(net, SelectiveKernel)


@contextmanager
def pynative():
    mode = ms.get_context("mode")
    if mode != ms.PYNATIVE_MODE:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        yield
    finally:
        if mode != ms.PYNATIVE_MODE:
            ms.set_context(mode=mode)


def capture(net, x, keep_branches=()):
    """Logits and ``{unit path: Capture}`` for the NCHW float32 batch ``x`` (see the torch backend)."""
    cells = sk_cells(net)
    with pynative(), hooked(cells, keep_branches) as seen:
        logits = net(ms.Tensor(np.ascontiguousarray(x, dtype=np.float32)))
        out = {}
        for path, cell in cells.items():
            if "logits" not in seen[path]:
                raise SKNetError(f"SK unit '{path}' ran no attention: is the network compiled with jit?")
            w = ops.softmax(seen[path]["logits"], axis=1).asnumpy()
            kept = [seen[path][i].asnumpy() for i in range(cell.num_branches)] if path in keep_branches else None
            out[path] = Capture(w.reshape(w.shape[0], w.shape[1], -1), kept)
    return logits.asnumpy(), out
