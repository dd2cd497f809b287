"""ONNX backend: the graph of any spec built with the ``onnx`` package alone, run in onnxruntime.

``build_model(spec, tensors, ...)`` returns an ``onnx.ModelProto`` from a canonical
state, ``run(proto, x)`` its fp32 logits; ``build(spec)`` gives an ``OnnxModel`` that
``sknet.create_model(..., backend="onnx")`` returns.
"""
from .analysis import graph_stats
from .fuse import fold_batchnorm
from .model import OnnxModel, build, build_model, count_trainable, load_canonical, to_canonical
from .runtime import run

__all__ = ["OnnxModel", "build", "build_model", "count_trainable", "fold_batchnorm", "graph_stats",
           "load_canonical", "run", "to_canonical"]
