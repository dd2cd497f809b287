"""Read the SK units' selection weights out of a PyTorch SKNet during an ordinary forward pass.

``capture`` puts forward hooks on every SK unit's attention module (its output is the
selection logits, whose softmax over the branch axis is the weights the unit applies) and
on the branch paths whose outputs are wanted, runs one forward pass and removes them, so
the logits are the very tensors the model computes without capture, and the modules carry
no recording state. Accelerated models (``fast.accelerate``) call the same modules.
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
def recording(model, keep_branches=()):
    """Yields ``{unit path: {"logits": tensor, "branches": [tensor, ...]}}``, filled by one forward pass."""
    cells = sk_cells(model)
    seen = {path: {"branches": {}} for path in cells}
    handles = []
    for path, cell in cells.items():
        def keep_logits(_module, _inputs, output, path=path):
            seen[path]["logits"] = output.detach().clone()
        handles.append(cell.attn.register_forward_hook(keep_logits))
        if path in keep_branches:
            for i, branch in enumerate(cell.paths):
                def keep_branch(_module, _inputs, output, path=path, i=i):
                    # Cloned: the select may reuse a branch's memory in place.
                    seen[path]["branches"][i] = output.detach().clone()
                handles.append(branch.register_forward_hook(keep_branch))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def capture(model, x, keep_branches=()):
    """Logits and ``{unit path: Capture}`` for the NCHW float32 batch ``x``.

    ``Capture.weights`` is (B, M, C): the softmax over the M branches per channel.
    Branch outputs (M arrays of (B, C, H, W)) are kept only for the units in
    ``keep_branches``, as they are large. The model's train/eval mode is left as it is; in
    train mode BN uses the batch's statistics and updates its running ones, as any forward does.
    """
    with torch.no_grad(), recording(model, keep_branches) as seen:
        logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    out = {}
    for path, got in seen.items():
        weights = torch.softmax(got["logits"], dim=1)
        branches = got["branches"]
        kept = [branches[i].contiguous().numpy() for i in sorted(branches)] if path in keep_branches else None
        out[path] = Capture(weights.flatten(2).numpy().copy(), kept)
    return logits.numpy(), out
