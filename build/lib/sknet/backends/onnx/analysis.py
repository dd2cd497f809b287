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


def _spatial_known(dims):
    return dims is not None and len(dims) > 2 and all(d is not None for d in dims[2:])


def _observed_shapes(model, names):
    """Shapes of ``names`` seen by running the graph once on zeros, for exporters' graphs that
    compute split sizes at run time (PyTorch's chunk), which static inference cannot follow."""
    from onnx import TensorProto, helper

    from .runtime import session

    probe = type(model)()
    probe.CopyFrom(model)
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    inp = probe.graph.input[0]
    dims = _dims(inp)
    if not all(d is not None for d in dims[1:]):
        raise ValueError(f"input '{inp.name}' {dims}: build the graph with a fixed image size to count MACs")
    sess = session(probe)
    outs = sess.run(names, {inp.name: np.zeros([dims[0] or 1, *dims[1:]], np.float32)})
    return {name: list(o.shape) for name, o in zip(names, outs)}


def graph_stats(model):
    """{"nodes", "ops", "macs", "params"}: MACs per image of every Conv and Gemm, as the spec counts them."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    g = inferred.graph
    shapes = {vi.name: _dims(vi) for vi in [*g.value_info, *g.input, *g.output]}
    inits = {t.name: tuple(t.dims) for t in g.initializer}
    convs = [n for n in g.node if n.op_type == "Conv"]
    unknown = [n.output[0] for n in convs if not _spatial_known(shapes.get(n.output[0]))]
    if unknown:
        shapes.update(_observed_shapes(model, unknown))
    macs = 0
    for n in g.node:
        if n.op_type == "Conv":
            out = shapes[n.output[0]]
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
