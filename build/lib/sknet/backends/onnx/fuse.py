"""Fold inference-mode BatchNormalization into the convolution before it, in any ONNX graph.

Works on the spec-built graph and on MindSpore's exports alike: a BN is folded when its
input comes from a Conv whose output feeds nothing else and whose weights and the BN's
statistics are initializers used nowhere else. The arithmetic is done in float64 and
rounded once to float32, so the folded graph differs from the unfolded one by the
rounding of the new weights only (measured in tests/test_onnx.py).
"""
from collections import Counter

import numpy as np
from onnx import helper, numpy_helper


def fold_batchnorm(model):
    """A copy of ``model`` with every foldable Conv -> BatchNormalization pair made one Conv."""
    out = type(model)()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    uses = Counter(i for n in graph.node for i in n.input)
    uses.update(o.name for o in graph.output)
    dropped = set()
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or uses[conv.output[0]] != 1:
            continue
        params = list(conv.input[1:]) + list(bn.input[1:5])
        if not all(p in inits and uses[p] == 1 for p in params):
            continue
        _fold(conv, bn, inits, graph)
        conv.output[0] = bn.output[0]
        dropped.add(id(bn))
    keep = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    alive = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(alive)
    return out


def _eps(bn):
    for attr in bn.attribute:
        if attr.name == "epsilon":
            return helper.get_attribute_value(attr)
    return 1e-5  # ONNX's default


def _fold(conv, bn, inits, graph):
    arr = lambda name: numpy_helper.to_array(inits[name]).astype(np.float64)  # noqa: E731
    w = arr(conv.input[1])
    gamma, beta, mean, var = (arr(n) for n in bn.input[1:5])
    scale = gamma / np.sqrt(var + _eps(bn))
    bias = arr(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0])
    new_w = (w * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
    new_b = ((bias - mean) * scale + beta).astype(np.float32)
    inits[conv.input[1]].CopyFrom(numpy_helper.from_array(new_w, conv.input[1]))
    if len(conv.input) > 2 and conv.input[2]:
        inits[conv.input[2]].CopyFrom(numpy_helper.from_array(new_b, conv.input[2]))
        return
    wname = conv.input[1]
    bname = wname[: -len("weight")] + "bias" if wname.endswith(".weight") else f"{wname}_bias"
    while bname in inits:
        bname += "_"
    inits[bname] = graph.initializer.add()
    inits[bname].CopyFrom(numpy_helper.from_array(new_b, bname))
    if len(conv.input) == 2:
        conv.input.append(bname)
    else:
        conv.input[2] = bname
