"""PyTorch deployment files, written from the reference model in eval mode and read back:

- ``torchscript``: ``torch.jit.script`` + ``torch.jit.save``, read by ``torch.jit.load``
  (C++ ``torch::jit::load``, TorchServe);
- ``torch-export``: ``torch.export.export`` + ``torch.export.save`` (an ``ExportedProgram``,
  .pt2), read by ``torch.export.load`` (AOTInductor, ExecuTorch take it from there).

The fast paths of ``fast.py`` are not exported: they do not script, and their oneDNN calls
are this CPU's choice, not the model's.
"""
import warnings

import torch

from sknet.errors import SKNetError, first_line

from .model import build
from .names import load_canonical


def reference(spec, tensors):
    """The eval-mode module the file is made from and checked against."""
    return load_canonical(build(spec), tensors).eval()


def run(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def write(fmt, model, path, example, dynamic):
    """Write ``model`` as ``fmt`` to ``path``; ``example`` (numpy) gives the input's shape."""
    try:
        if fmt == "torchscript":
            # Scripted, not traced: a trace replays one run, and Python arithmetic on the
            # input's size is frozen into it as constants (the "same" stem pool of the mindcv
            # specs computes its padding from H and W: a traced file pads every size as the
            # traced one, silently wrong). The script keeps the code, so every dimension stays free.
            with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; it is still what libtorch loads
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.jit.save(torch.jit.script(model), path)
        elif fmt == "torch-export":
            # The example batch is >= 2: torch.export specialises a dimension seen as 1.
            x = torch.from_numpy(example)
            shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
            with torch.no_grad():
                program = torch.export.export(model, (x,), dynamic_shapes=shapes)
            torch.export.save(program, path)
        else:
            raise SKNetError(f"PyTorch writes no '{fmt}' files here")
    except SKNetError:
        raise
    except Exception as err:  # the exporters' own errors (unsupported op, constraint violated)
        raise SKNetError(f"{fmt} export failed: {first_line(err)}") from None


def load(fmt, path):
    """A function numpy -> numpy running the file at ``path``."""
    try:
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(path, map_location="cpu")
        else:
            model = torch.export.load(path).module()
    except Exception as err:
        raise SKNetError(f"{path}: loading the {fmt} file failed: {first_line(err)}") from None

    def forward(x):
        try:
            return run(model, x)
        except Exception as err:  # e.g. a batch outside the program's range
            raise SKNetError(f"the {fmt} file fails at input {tuple(x.shape)}: {first_line(err)}") from None

    return forward
