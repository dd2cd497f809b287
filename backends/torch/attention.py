"""Read the SK units' selection weights out of a PyTorch SKNet during an ordinary forward pass.

``capture`` puts forward hooks on every SK unit's attention module (its output is the
selection logits, whose softmax over the branch axis is the weights the unit applies) and
on the branch paths whose outputs are wanted, runs one forward pass and removes them, so
the logits are the very tensors the model computes without capture, and the modules carry
no recording state. Accelerated models (``fast.accelerate``) call the same modules.
"""
import numpy as np
import torch

from sknet.attention import Capture, hooked
from sknet.attention import sk_cells as find_sk_cells

from .layers import SelectiveKernel


def sk_cells(model):
    """``{unit path: SelectiveKernel}`` for every SK unit the spec's tree lists, in build order."""
    return find_sk_cells(model, SelectiveKernel)


def capture(model, x, keep_branches=()):
    """Logits and ``{unit path: Capture}`` for the NCHW float32 batch ``x``.

    ``Capture.weights`` is (B, M, C): the softmax over the M branches per channel.
    Branch outputs (M arrays of (B, C, H, W)) are kept only for the units in
    ``keep_branches``, as they are large. The model's train/eval mode is left as it is; in
    train mode BN uses the batch's statistics and updates its running ones, as any forward does.
    """
    cells = sk_cells(model)
    # Cloned: the fast select may reuse a branch's memory in place.
    with torch.no_grad(), hooked(cells, keep_branches, keep=lambda t: t.detach().clone()) as seen:
        logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    out = {}
    for path, cell in cells.items():
        weights = torch.softmax(seen[path]["logits"], dim=1)
        kept = ([seen[path][i].contiguous().numpy() for i in range(len(cell.paths))]
                if path in keep_branches else None)
        out[path] = Capture(weights.flatten(2).numpy().copy(), kept)
    return logits.numpy(), out
