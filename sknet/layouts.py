"""Checkpoint layouts: what each ecosystem calls every tensor of a spec.

Three naming schemes, each derived from the module tree (``sknet.tree``) so that a
user's own spec gets them too:

- ``torch``: our PyTorch names, which are timm's (``layer1.0.conv1.paths.0.conv.weight``,
  ``...bn.running_var``, ``downsample.0``, ``fc``), with one ``num_batches_tracked`` per BN.
- ``mindspore``: our MindSpore names, the same tree with MindSpore's BN parameter names
  (``gamma/beta/moving_mean/moving_variance``).
- ``mindcv``: mindcv's names. mindcv builds a conv-BN pair as a ``SequentialCell``, so
  ``X.conv/X.bn`` become ``X.0/X.1``, except inside an SK unit's paths, whose pairs are
  ``Conv2dNormActivation`` cells holding the sequence in ``features`` (``X.features.0/1``);
  ``downsample`` is ``down_sample`` and the head ``fc`` is ``classifier``.

On the command line ``timm`` means the ``torch`` scheme and ``native`` means the scheme
of the destination's framework (``mindspore`` for ``.ckpt``, ``torch`` otherwise).
"""
from dataclasses import dataclass
from functools import lru_cache
from typing import Tuple

from .errors import CheckpointError
from .params import tensor_specs
from .tree import Conv, Norm, SKUnit, layers

SCHEMES = ("torch", "mindspore", "mindcv")
TRACKED = "num_batches_tracked"
# MindSpore's BatchNorm2d names; sknet.backends.mindspore.names uses the same (a test checks).
MS_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
         "running_var": "moving_variance"}
# Order of a BN's tensors in each framework's own listing (state_dict / get_parameters).
TORCH_BN_ORDER = ("weight", "bias", "running_mean", "running_var")
MS_BN_ORDER = ("running_mean", "running_var", "weight", "bias")
SCHEME_LABEL = {"torch": "timm/PyTorch", "mindspore": "MindSpore", "mindcv": "mindcv",
                "caffe": "the authors' Caffe"}


@dataclass(frozen=True)
class Entry:
    """One tensor in a layout: its canonical name, its name in the file, shape and role.

    ``kind`` is conv|bn|linear as in ``sknet.params``, or ``tracked`` for PyTorch's
    ``num_batches_tracked`` (canonical name ``<bn path>.num_batches_tracked``).
    """
    canonical: str
    name: str
    shape: Tuple[int, ...]
    kind: str
    trainable: bool


def scheme_for(layout, fmt):
    """The naming scheme a command-line ``layout`` means for a file of format ``fmt``."""
    if layout == "native":
        return "mindspore" if fmt == "mindspore" else "torch"
    if layout == "timm":
        return "torch"
    if layout in ("mindcv", "torch", "mindspore"):
        return layout
    raise CheckpointError(f"unknown layout '{layout}' (choose from: native, timm, mindcv)")


def _conv_bn_pairs(items):
    """Paths P holding a conv at P.conv and its BN at P.bn (our ConvBnAct), from the tree."""
    convs = {x.path for x in items if isinstance(x, Conv)}
    norms = {x.path for x in items if isinstance(x, Norm)}
    return {p[: -len(".conv")] for p in convs if p.endswith(".conv") and p[: -len(".conv")] + ".bn" in norms}


def _mindcv_path(path, pairs, sk_paths):
    head, _, leaf = path.rpartition(".")
    if head in pairs:
        index = "0" if leaf == "conv" else "1"
        parent = head.rpartition(".")[0]
        path = f"{head}.features.{index}" if parent.endswith(".paths") and \
            parent[: -len(".paths")] in sk_paths else f"{head}.{index}"
    parts = ["down_sample" if p == "downsample" else p for p in path.split(".")]
    if parts == ["fc"]:
        parts = ["classifier"]
    return ".".join(parts)


@lru_cache(maxsize=64)
def entries(spec, scheme):
    """Every tensor of ``spec`` under ``scheme``, in that framework's own order."""
    if scheme not in SCHEMES:
        raise CheckpointError(f"unknown naming scheme '{scheme}'")
    items = layers(spec)
    pairs = _conv_bn_pairs(items)
    sk_paths = {x.path for x in items if isinstance(x, SKUnit)}
    by_name = {name: (shape, kind, trainable) for name, shape, kind, trainable in tensor_specs(spec)}
    out = []
    for layer in items:
        if isinstance(layer, SKUnit):
            continue
        path = _mindcv_path(layer.path, pairs, sk_paths) if scheme == "mindcv" else layer.path
        if isinstance(layer, Norm):
            order = TORCH_BN_ORDER if scheme == "torch" else MS_BN_ORDER
            for suffix in order:
                canonical = f"{layer.path}.{suffix}"
                shape, kind, trainable = by_name[canonical]
                name = f"{path}.{suffix if scheme == 'torch' else MS_BN[suffix]}"
                out.append(Entry(canonical, name, shape, kind, trainable))
            if scheme == "torch":
                out.append(Entry(f"{layer.path}.{TRACKED}", f"{path}.{TRACKED}", (), "tracked", False))
            continue
        for canonical in (f"{layer.path}.weight", f"{layer.path}.bias"):
            if canonical in by_name:
                shape, kind, trainable = by_name[canonical]
                out.append(Entry(canonical, path + canonical[len(layer.path):], shape, kind, trainable))
    return tuple(out)


def names(spec, scheme):
    """{name in ``scheme``: Entry}, ``num_batches_tracked`` included for the torch scheme."""
    return {e.name: e for e in entries(spec, scheme)}


def detect_scheme(keys, source=""):
    """Which scheme a file's tensor names follow, from the names alone.

    mindcv is recognised by what only it has (``classifier``, ``down_sample``,
    ``features.N``); otherwise MindSpore's BN names mean our
    MindSpore scheme and PyTorch's mean the torch/timm one.
    """
    keys = list(keys)
    if not keys:
        raise CheckpointError(f"{source}: holds no tensors")
    mindcv = ("classifier.", ".down_sample.", ".features.0.", ".features.1.")
    if any(k.startswith(mindcv[0]) or any(m in k for m in mindcv[1:]) for k in keys):
        return "mindcv"
    if any(k.endswith((".gamma", ".moving_mean", ".moving_variance")) for k in keys):
        return "mindspore"
    if any(k.endswith((".running_mean", ".running_var", "." + TRACKED)) or k.endswith(".weight") for k in keys):
        return "torch"
    raise CheckpointError(f"{source}: tensor names follow no known layout (first: {', '.join(keys[:3])})")
