"""Assemble the ONNX graph of a spec, and a small model object that runs it in onnxruntime.

``build_model`` needs only the ``onnx`` package: it walks the spec's block plan
(``sknet.plan``) as the PyTorch and MindSpore backends do (stem, SK blocks, pooled linear head),
in inference mode, with BN as BatchNormalization nodes or folded into the convs.
"""
import numpy as np
import onnx

from sknet.errors import SKNetError
from sknet.statecheck import check_state
from sknet.params import init_state, tensor_specs
from sknet.plan import build_plan

from .analysis import graph_stats
from .fuse import fold_batchnorm
from .graph import MIN_OPSET, GraphBuilder, tensor_info
from .layers import batch_norm, block, conv, max_pool
from .runtime import run_session, session

INPUT, OUTPUT = "input", "logits"


def check_tensors(spec, tensors):
    """CheckpointError naming missing, unexpected and misshapen tensors of a canonical state."""
    check_state({name: tuple(shape) for name, shape, _, _ in tensor_specs(spec)}, tensors)


def check_opset(opset):
    top = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= top:
        raise SKNetError(f"opset {opset} not supported: choose {MIN_OPSET} to {top} "
                         f"(the onnx package {onnx.__version__} knows up to {top})")


def build_model(spec, tensors, fuse_bn=False, opset=17, dynamic_batch=True, batch=1, size=None):
    """The ONNX ``ModelProto`` of ``spec`` holding the canonical ``tensors`` (eval mode, fp32).

    Input ``input`` (N, C, H, W), output ``logits`` (N, classes). N is the symbol 'batch'
    when ``dynamic_batch`` else ``batch``; H and W are the
    symbols 'height'/'width' without ``size`` (every op here takes any size), else ``size``.
    ``fuse_bn`` folds every BN into its conv.
    """
    if spec.features.only or not spec.num_classes:
        from sknet.errors import SKNetError

        raise SKNetError(f"'{spec.name}': the ONNX builder makes classifiers only (no features_only, num_classes >= 1)")
    check_opset(opset)
    check_tensors(spec, tensors)
    g = GraphBuilder(tensors, spec.norm.eps)
    plan = build_plan(spec)
    x = conv(g, "conv1", INPUT, plan.stem.conv)
    x = g.node("Relu", [batch_norm(g, "bn1", x)], "act1")
    if plan.stem.pool is not None:
        x = max_pool(g, "maxpool", x, plan.stem.pool)
    for b in plan.blocks:
        x = block(g, b, x)
    # Dropout is the identity in inference; the head is pool, flatten, fc.
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x], "global_pool")], "flatten", axis=1)
    g.nodes.append(onnx.helper.make_node("Gemm", [x, g.weight("fc.weight"), g.weight("fc.bias")],
                                         [OUTPUT], name="fc", transB=1))
    n = "batch" if dynamic_batch else batch
    hw = [size, size] if size else ["height", "width"]
    inp = tensor_info(INPUT, [n, spec.input.in_chans, *hw])
    out = tensor_info(OUTPUT, [n, spec.num_classes])
    meta = {"sknet.model": spec.name, "sknet.fuse_bn": fuse_bn,
            "sknet.input_size": spec.input.size, "sknet.crop_pct": spec.input.crop_pct,
            "sknet.interpolation": spec.input.interpolation,
            "sknet.mean": ",".join(map(str, spec.input.mean)), "sknet.std": ",".join(map(str, spec.input.std))}
    model = g.model(spec.name, [inp], [out], opset, doc=spec.description, metadata=meta)
    return fold_batchnorm(model) if fuse_bn else model


class OnnxModel:
    """An SKNet as an ONNX graph with its weights: call it on NCHW arrays to get logits.

    The graph is built on first use (any batch, any image size) and rebuilt when weights
    are loaded; ``proto`` is the ``onnx.ModelProto``.
    """

    def __init__(self, spec, tensors, fuse_bn=False, opset=17):
        self.spec, self.fuse_bn, self.opset = spec, fuse_bn, opset
        self.tensors = {}
        self._proto = self._session = None
        load_canonical(self, tensors)

    @property
    def proto(self):
        if self._proto is None:
            self._proto = build_model(self.spec, self.tensors, self.fuse_bn, self.opset, dynamic_batch=True)
        return self._proto

    def __call__(self, x):
        if self._session is None:
            self._session = session(self.proto)
        return run_session(self._session, x)

    def eval(self):
        return self  # always in inference mode; here so code written for torch modules runs as is


def build(spec, seed=0, fast=None, **options):
    """An ``OnnxModel`` for ``spec``, initialised from ``sknet.params.init_state(spec, seed)``.

    ``fast`` (``create_model``'s) changes nothing: onnxruntime optimises the graph itself.
    """
    return OnnxModel(spec, init_state(spec, seed), **options)


def load_canonical(model, tensors):
    """Give ``model`` the canonical arrays; mismatched names or shapes raise CheckpointError."""
    check_tensors(model.spec, tensors)
    model.tensors = {k: np.array(tensors[k], dtype=np.float32) for k, *_ in tensor_specs(model.spec)}
    model._proto = model._session = None
    return model


def to_canonical(model):
    return {k: v.copy() for k, v in model.tensors.items()}


def count_trainable(model):
    """Learned parameters as the graph holds them: Conv/Gemm weights and biases, BN scales and shifts."""
    proto = build_model(model.spec, model.tensors, model.fuse_bn, model.opset, size=model.spec.input.size)
    return graph_stats(proto)["params"]
