"""Deployment files besides ONNX: each written, read back and checked before it is kept.

- torchscript (PyTorch serving, libtorch, TorchServe): torch.jit.script + save, read by torch.jit.load;
- torch-export (AOTInductor, ExecuTorch): torch.export.export + save, read by torch.export.load;
- mindir (MindSpore Lite, Ascend): mindspore.export, read by mindspore.load + nn.GraphCell.

The code for each sits in ``backends/<backend>/export.py`` (``reference``, ``run``,
``write``, ``load``); this module holds what is common: the inputs, the comparison, the
atomic write. ONNX has its own three writers (``backends/onnx/exporters.py``).
"""
import importlib

import numpy as np

from .atomic import atomic_write
from .errors import SKNetError

# format -> (backend that writes it, usual suffix)
FORMATS = {"onnx": ("onnx", ".onnx"), "torchscript": ("torch", ".pt"), "torch-export": ("torch", ".pt2"),
           "mindir": ("mindspore", ".mindir")}
# What a free batch is checked at: two sizes, one of them 1 (the size exporters specialise).
DYNAMIC_BATCHES = (1, 3)


def format_for(output, fmt=None):
    """The format asked for, else the one ``output``'s suffix names, else ONNX; a suffix of
    another known format contradicting ``fmt`` is refused."""
    by_suffix = {suffix: name for name, (_, suffix) in FORMATS.items()}
    implied = by_suffix.get(str(output).lower()[str(output).rfind("."):]) if output and "." in str(output) else None
    if fmt is None:
        return implied or "onnx"
    if fmt not in FORMATS:
        raise SKNetError(f"unknown format '{fmt}' (choose from: {', '.join(FORMATS)})")
    if implied and implied != fmt:
        raise SKNetError(f"{output}: the suffix says {implied}, --format says {fmt}")
    return fmt


def inputs(spec, batches, size, seed=0):
    """Fixed seeded standard-normal batches, one per batch size (NCHW float32)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((b, spec.input.in_chans, size, size)).astype(np.float32) for b in batches]


def difference(outs, refs):
    """(max |out - ref|, that divided by the largest |ref|) over all pairs."""
    worst_abs = max(float(np.abs(o - r).max()) for o, r in zip(outs, refs))
    scale = max(float(np.abs(r).max()) for r in refs)
    return worst_abs, worst_abs / scale


def write_checked(fmt, spec, tensors, output, batches, dynamic, size, tol):
    """Write ``spec`` with ``tensors`` as ``fmt`` to ``output``, only if the file, loaded back,
    gives the framework's logits at every batch in ``batches`` within ``tol`` (relative to
    the largest |logit|). Returns {"max_abs_diff", "max_rel_err"}."""
    from . import backend_module

    backend = FORMATS[fmt][0]
    backend_module(backend)  # BackendMissing names the extra to install
    module = importlib.import_module(f"sknet.backends.{backend}.export")
    model = module.reference(spec, tensors)
    xs = inputs(spec, batches, size)
    refs = [module.run(model, x) for x in xs]
    example = max(xs, key=len)
    result = {}

    def write(tmp):
        module.write(fmt, model, tmp, example, dynamic)
        forward = module.load(fmt, tmp)
        outs = [forward(x) for x in xs]
        for out, ref in zip(outs, refs):
            if out.shape != ref.shape:
                raise SKNetError(f"the {fmt} file gave logits of shape {out.shape}, {backend} {ref.shape}")
        abs_diff, rel = difference(outs, refs)
        if not rel <= tol:
            raise SKNetError(f"the {fmt} file disagrees with {backend}: max |diff| {abs_diff:.2e}, "
                             f"{rel:.2e} of the largest |logit| (tolerance {tol:g}); nothing written to {output}")
        result.update(max_abs_diff=abs_diff, max_rel_err=rel)

    atomic_write(output, write)
    return result
