"""ONNX files from three sources, each checked in onnxruntime against where it came from.

- ``spec``: ``build_model`` (the onnx package only), checked against every installed framework;
- ``torch``: ``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``: the
  dynamo exporter needs onnxscript, which nothing else here does), checked against PyTorch;
- ``mindspore``: ``mindspore.onnx.export`` (``mindspore.export(..., file_format="ONNX")`` before
  MindSpore 2.7), checked against MindSpore.
"""
import io
import os
import tempfile
import warnings

import numpy as np
import onnx

from sknet.errors import BackendMissing, SKNetError, first_line

from .fuse import fold_batchnorm
from .model import INPUT, OUTPUT, build_model, check_opset, check_tensors
from .runtime import run

VIAS = ("spec", "torch", "mindspore")


def export(spec, tensors, via="spec", opset=17, fuse_bn=False, dynamic_batch=False, batch=1, size=None):
    """The ``ModelProto`` of ``spec`` with ``tensors`` produced ``via`` the spec, PyTorch or MindSpore."""
    check_opset(opset)
    check_tensors(spec, tensors)
    size = size or spec.input.size
    if via == "spec":
        return build_model(spec, tensors, fuse_bn, opset, dynamic_batch, batch, size)
    if via == "torch":
        return from_torch(spec, tensors, opset, fuse_bn, dynamic_batch, batch, size)
    if via == "mindspore":
        return from_mindspore(spec, tensors, opset, fuse_bn, dynamic_batch, batch, size)
    raise SKNetError(f"unknown --via '{via}' (choose from: {', '.join(VIAS)})")


def _import(backend):
    from sknet import backend_module

    return backend_module(backend)


def from_torch(spec, tensors, opset, fuse_bn, dynamic_batch, batch, size):
    import torch

    bt = _import("torch")
    # Asked beforehand: past its newest opset the exporter dumps its whole IR graph to stderr.
    top = getattr(getattr(torch.onnx, "_constants", None), "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", None)
    if top is not None and opset > top:
        raise SKNetError(f"torch.onnx.export (dynamo=False) writes opsets up to {top}, not {opset}; "
                         f"use --opset {top} or --via spec")
    model = bt.load_canonical(bt.build(spec), tensors).eval()
    x = torch.zeros(batch, spec.input.in_chans, size, size)
    axes = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    # The TorchScript exporter folds eval-mode BN into the convs as part of constant
    # folding; without --fuse-bn it is turned off so the BN nodes stay. The model is the
    # reference one (no fast.accelerate): no layout ops or slices of the CPU fast paths.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=opset, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_axes=axes, do_constant_folding=fuse_bn)
        except Exception as err:  # the exporter's own errors, e.g. an opset it does not support
            raise SKNetError(f"torch.onnx.export failed at opset {opset}: {first_line(err)}") from None
    return onnx.load_from_string(buf.getvalue())


def from_mindspore(spec, tensors, opset, fuse_bn, dynamic_batch, batch, size):
    _import("mindspore")
    import mindspore as ms

    from sknet.backends.mindspore.export import exportable, graph_mode, reference

    if dynamic_batch:
        raise SKNetError("MindSpore's ONNX exporter takes no dynamic shapes ('Export ONNX format model not "
                         "support dynamic shape mode'): export a fixed --batch, or use --via spec or torch")
    # The plain cells, stem pool made writable (sknet.backends.mindspore.export): the CPU im2col
    # convs pad with PadV3, which the exporter cannot write, and they are on or off by
    # ONEDNN_MAX_CPU_ISA, so the graph would depend on the environment.
    net = exportable(reference(spec, tensors), spec, size)
    try:
        with graph_mode(), tempfile.TemporaryDirectory() as tmp:
            x = ms.Tensor(np.zeros((batch, spec.input.in_chans, size, size), np.float32))
            path = os.path.join(tmp, "model.onnx")
            if hasattr(ms, "onnx"):  # mindspore.export(file_format="ONNX") is deprecated where this exists
                ms.onnx.export(net, x, file_name=path, input_names=[INPUT], output_names=[OUTPUT])
            else:
                ms.export(net, x, file_name=path[:-5], file_format="ONNX")
            model = onnx.load(path)
    except (RuntimeError, ValueError, TypeError) as err:
        raise SKNetError(f"mindspore.export failed: {first_line(err)}") from None
    _rename_io(model)
    if fuse_bn:
        model = fold_batchnorm(model)
    have = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if have != opset:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, opset)
        except Exception as err:
            raise SKNetError(f"MindSpore wrote opset {have}; converting it to {opset} failed: "
                             f"{first_line(err)}") from None
    return model


def _rename_io(model):
    """Call the graph's input 'input' and its output 'logits', as the other exports do
    (``mindspore.export`` names them itself)."""
    g = model.graph
    renames = {g.input[0].name: INPUT, g.output[0].name: OUTPUT}
    for vi in (g.input[0], g.output[0]):
        vi.name = renames[vi.name]
    for n in g.node:
        for seq in (n.input, n.output):
            for i, name in enumerate(seq):
                if name in renames:
                    seq[i] = renames[name]


def reference_logits(backend, spec, tensors, x):
    """Logits of ``x`` from the framework ``backend`` itself, in eval mode, fp32."""
    if backend == "torch":
        import torch

        bt = _import("torch")
        model = bt.load_canonical(bt.build(spec), tensors).eval()
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    if backend == "mindspore":
        bm = _import("mindspore")
        import mindspore as ms

        net = bm.load_canonical(bm.build(spec), tensors)
        net.set_train(False)
        return net(ms.Tensor(x)).asnumpy()
    raise SKNetError(f"no reference backend '{backend}'")


def references_for(via):
    """The frameworks an export made ``via`` is checked against: its own, or all installed for the spec."""
    if via != "spec":
        return [via]
    found = []
    for backend in ("torch", "mindspore"):
        try:
            _import(backend)
            found.append(backend)
        except BackendMissing:
            pass
    return found


def verify(model, spec, tensors, backends, batches, size=None, seed=0):
    """{backend: max |ORT - framework| / max |framework|} over fixed seeded inputs of each batch size."""
    size = size or spec.input.size
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal((b, spec.input.in_chans, size, size)).astype(np.float32) for b in batches]
    errors = {}
    for backend in backends:
        worst = 0.0
        for x in inputs:
            ref = reference_logits(backend, spec, tensors, x)
            out = run(model, x)
            if out.shape != ref.shape:
                raise SKNetError(f"onnxruntime gave logits of shape {out.shape}, {backend} {ref.shape}")
            worst = max(worst, float(np.abs(out - ref).max() / np.abs(ref).max()))
        errors[backend] = worst
    return errors
