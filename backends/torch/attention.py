"""Read the SK units' selection weights out of a PyTorch SKNet during an ordinary forward pass.

Every ``SelectiveKernel`` has a ``record`` flag (off by default, so the normal forward
pass does nothing extra); while it is on, the unit keeps its last softmax weights and
branch outputs in ``recorded``. ``capture`` switches the flag on for the duration of one
forward pass, copies what was recorded to NumPy and switches it off again, so the
logits are the very tensors the model computes without capture.
"""
from contextlib import contextmanager

import numpy as np
import torch

from sknet.attention import Capture
from sknet.attention import sk_cells as find_sk_cells

from .layers import SelectiveKernel


def sk_cells(model):
    """``{unit path: SelectiveKernel}`` for every SK unit the spec's tree lists, in build order."""
    return find_sk_cells(model, SelectiveKernel)


@contextmanager
def recording(model):
    """Switch ``record`` on for every SK unit; off again (and the records dropped) on exit."""
    cells = sk_cells(model)
    for cell in cells.values():
        cell.record, cell.recorded = True, None
    try:
        yield cells
    finally:
        for cell in cells.values():
            cell.record, cell.recorded = False, None


def capture(model, x, keep_branches=()):
    """Logits and ``{unit path: Capture}`` for the NCHW float32 batch ``x``.

    ``Capture.weights`` is (B, M, C): the softmax over the M branches per channel.
    Branch outputs (M arrays of (B, C, H, W)) are kept only for the units in
    ``keep_branches``, as they are large. The model's train/eval mode is left as it is; in
    train mode BN uses the batch's statistics and updates its running ones, as any forward does.
    """
    with torch.no_grad(), recording(model) as cells:
        logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        out = {}
        for path, cell in cells.items():
            weights, branches = cell.recorded
            kept = [b.numpy().copy() for b in branches] if path in keep_branches else None
            out[path] = Capture(weights.flatten(2).numpy().copy(), kept)
    return logits.numpy(), out
