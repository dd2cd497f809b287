"""PyTorch parameter names: our module tree uses the canonical names unchanged.

PyTorch adds one buffer per BN, ``num_batches_tracked``, that no other backend has;
it only matters when BN momentum is None (cumulative averaging), never in our specs.
"""
import numpy as np
import torch

from sknet.statecheck import check_state
from sknet.params import tensor_specs

TRACKED = "num_batches_tracked"


def to_canonical(model_or_state):
    """Canonical ``{name: ndarray}`` from a module or state dict (``num_batches_tracked`` dropped)."""
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    return {k: v.detach().cpu().numpy() for k, v in state.items() if not k.endswith(TRACKED)}


def from_canonical(spec, tensors, tracked=0):
    """A PyTorch state dict for ``spec`` from canonical arrays, with BN ``num_batches_tracked``."""
    state = {}
    for name, shape, kind, _ in tensor_specs(spec):
        state[name] = torch.from_numpy(np.ascontiguousarray(tensors[name]))
        if kind == "bn" and name.endswith(".running_var"):
            state[name[: -len("running_var")] + TRACKED] = torch.tensor(tracked, dtype=torch.long)
    return state


def load_canonical(model, tensors, tracked=0):
    """Copy canonical arrays into ``model``; mismatched keys or shapes raise CheckpointError."""
    check_state({k: v.shape for k, v in model.state_dict().items() if not k.endswith(TRACKED)}, tensors)
    model.load_state_dict(from_canonical(model.spec, tensors, tracked))
    return model

