"""What a graph itself says it computes: node count, operators, MACs and parameters.

The counts come from the ONNX graph alone (its nodes, initializers and the shapes
ONNX's own shape inference gives), not from ``sknet.tree``, so they check the spec's
numbers independently.
"""
from collections import Counter

import numpy as np
import onnx

# Inputs holding learned parameters: (weight, bias) of Conv/Gemm, (scale, shift) of BN.
PARAM_INPUTS = {"Conv": (1, 2), "Gemm": (1, 2), "BatchNormalization": (1, 2)}


def _dims(value_info):
    return [d.dim_value if d.HasField("dim_value") else None
            for d in value_info.type.tensor_type.shape.dim]


def graph_stats(model):
    """{"nodes", "ops", "macs", "params"}: MACs per image of every Conv and Gemm, as the spec counts them."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    shapes = {vi.name: _dims(vi) for vi in [*g.value_info, *g.input, *g.output]}
    inits = {t.name: tuple(t.dims) for t in g.initializer}
    macs = 0
    for n in g.node:
        if n.op_type == "Conv":
            out = shapes.get(n.output[0])
            if out is None or any(d is None for d in out[2:]):
                raise ValueError(f"{n.name}: output shape unknown; build the graph with a fixed image size")
            w = inits[n.input[1]]
            macs += int(np.prod(out[2:])) * int(np.prod(w))
        elif n.op_type == "Gemm":
            macs += int(np.prod(inits[n.input[1]]))
    params = set()
    for n in g.node:
        for i in PARAM_INPUTS.get(n.op_type, ()):
            if len(n.input) > i and n.input[i] in inits:
                params.add(n.input[i])
    return {"nodes": len(g.node), "ops": dict(sorted(Counter(n.op_type for n in g.node).items())),
            "macs": macs, "params": int(sum(np.prod(inits[p]) for p in params))}
