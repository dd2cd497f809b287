"""Read the SK units' selection weights out of a MindSpore SKNet: PYNATIVE mode only.

A ``SelectiveKernel`` cell stores its last softmax weights and branch outputs in
``recorded`` while its ``record`` flag is on. Storing a Python attribute from inside
``construct`` is something only PYNATIVE (eager) execution does; a GRAPH-mode compile
would drop it. ``capture`` therefore runs its forward pass in PYNATIVE mode, switching the
context there for the call and back afterwards if the caller was in GRAPH mode.
"""
from contextlib import contextmanager

import mindspore as ms
import numpy as np

from sknet.attention import Capture
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


@contextmanager
def recording(net):
    """Switch ``record`` on for every SK unit; off again (and the records dropped) on exit."""
    cells = sk_cells(net)
    for cell in cells.values():
        cell.record, cell.recorded = True, None
    try:
        yield cells
    finally:
        for cell in cells.values():
            cell.record, cell.recorded = False, None


def capture(net, x, keep_branches=()):
    """Logits and ``{unit path: Capture}`` for the NCHW float32 batch ``x`` (see the torch backend)."""
    with pynative(), recording(net) as cells:
        logits = net(ms.Tensor(np.ascontiguousarray(x, dtype=np.float32)))
        out = {}
        for path, cell in cells.items():
            if cell.recorded is None:
                raise SKNetError(f"SK unit '{path}' recorded nothing: is the network compiled with jit?")
            weights, branches = cell.recorded
            w = weights.asnumpy()
            kept = [b.asnumpy() for b in branches] if path in keep_branches else None
            out[path] = Capture(w.reshape(w.shape[0], w.shape[1], -1), kept)
    return logits.asnumpy(), out
