"""MindSpore parameter names: the canonical tree with MindSpore's BN names.

BN ``weight/bias/running_mean/running_var`` are ``gamma/beta/moving_mean/moving_variance``
here; every other name is the canonical one. This is the only place that says so.
"""
import mindspore as ms
import numpy as np

from sknet.statecheck import check_state
from sknet.layouts import MS_BN as BN_NAMES
from sknet.params import tensor_specs


def ms_name(name, kind):
    if kind != "bn":
        return name
    prefix, suffix = name.rsplit(".", 1)
    return f"{prefix}.{BN_NAMES[suffix]}"


def name_map(spec):
    """{canonical name: MindSpore name} for every tensor of ``spec``."""
    return {name: ms_name(name, kind) for name, _, kind, _ in tensor_specs(spec)}


def name_parameters(net):
    """Name every parameter of ``net`` after its path in the tree (the canonical one, MindSpore's BN names)."""
    for name, param in net.parameters_and_names():
        param.name = name
    return net


def _params(net):
    return {p.name: p for p in net.get_parameters()}


def to_canonical(net):
    params = _params(net)
    return {c: params[m].asnumpy() for c, m in name_map(net.spec).items()}


def load_canonical(net, tensors):
    """Copy canonical arrays into ``net``; mismatched names or shapes raise CheckpointError."""
    params = _params(net)
    mapping = name_map(net.spec)
    check_state({c: tuple(params[m].shape) for c, m in mapping.items()}, tensors)
    for c, m in mapping.items():
        params[m].set_data(ms.Tensor(np.ascontiguousarray(tensors[c], dtype=np.float32)))
    return net
