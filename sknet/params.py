"""Framework-neutral tensors of a spec: canonical names, shapes and the initial weights.

Canonical names follow the module tree of ``sknet.tree`` with PyTorch's tensor
suffixes (``weight``, ``bias``, ``running_mean``, ``running_var``). Each backend's
``names.py`` maps these to its own; checkpoint layouts (timm, mindcv) map them in
``sknet.layouts``. A canonical state is a plain ``{name: numpy.ndarray}``.
"""
import math

import numpy as np

from .tree import Conv, Linear, Norm, param_layers, residual_norms

BN_STATS = ("running_mean", "running_var")


def tensor_specs(spec):
    """[(canonical name, shape, kind, trainable)] in build order; kind is conv|bn|linear."""
    out = []
    for layer in param_layers(spec):
        if isinstance(layer, Conv):
            out.append((f"{layer.path}.weight", layer.weight_shape, "conv", True))
            if layer.bias:
                out.append((f"{layer.path}.bias", (layer.out_ch,), "conv", True))
        elif isinstance(layer, Norm):
            for suffix in ("weight", "bias"):
                out.append((f"{layer.path}.{suffix}", (layer.channels,), "bn", True))
            for suffix in BN_STATS:
                out.append((f"{layer.path}.{suffix}", (layer.channels,), "bn", False))
        elif isinstance(layer, Linear):
            out.append((f"{layer.path}.weight", (layer.out_features, layer.in_features), "linear", True))
            out.append((f"{layer.path}.bias", (layer.out_features,), "linear", True))
    return out


def init_state(spec, seed=0, residual_gamma=1.0):
    """Initial weights as in the paper: He normal (fan_out) convs, BN at identity, small uniform head.

    Drawn once in NumPy so that both backends start from bit-identical weights for a seed.
    ``residual_gamma`` is the weight of each block's last residual-branch BN (1 in timm's and
    mindcv's SK models; 0 is the zero-gamma init); the other tensors do not depend on it.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    state = {}
    for name, shape, kind, _ in tensor_specs(spec):
        suffix = name.rsplit(".", 1)[1]
        if kind == "conv" and suffix == "weight":
            # PyTorch's fan_out for a conv is out_channels * kernel area, groups not divided out.
            fan_out = shape[0] * shape[2] * shape[3]
            arr = rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_out))
        elif kind == "linear" and suffix == "weight":
            bound = 1.0 / math.sqrt(shape[1])
            arr = rng.uniform(-bound, bound, size=shape).astype(np.float32)
        elif suffix in ("weight", "running_var"):
            arr = np.ones(shape, np.float32)
        else:
            arr = np.zeros(shape, np.float32)
        state[name] = arr
    for path in residual_norms(spec):
        state[f"{path}.weight"] = np.full_like(state[f"{path}.weight"], residual_gamma)
    return state


def head_state(spec, seed=0):
    """The classifier's tensors as ``init_state(spec, seed)`` draws them: a reset head gets what
    a fresh model of its spec would."""
    return {k: v for k, v in init_state(spec, seed).items() if k.startswith("fc.")}
