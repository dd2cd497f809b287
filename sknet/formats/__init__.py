"""Checkpoint files: one module per format behind one table.

Each format module has ``NAME``, ``LABEL``, ``read(path) -> RawCheckpoint`` and
``write(tmp, tensors, momentum, scalars)``; ``read`` and ``write`` here pick it by the
file's extension, give one-line errors naming the file, and write through
``sknet.atomic.atomic_write`` (whole or not at all). Reading never runs code from a file
and checks every size against the file before allocating. PyTorch files need PyTorch;
``.ckpt`` and safetensors files need neither MindSpore nor PyTorch to read, and writing
a ``.ckpt`` needs MindSpore. Caffe ``.caffemodel`` files are read only (with the protobuf
package, no Caffe). Each package is imported when a file of its format is first touched.
"""
import importlib
import os
from pathlib import Path

from ..atomic import atomic_write
from ..errors import CheckpointError
from . import caffe, mindspore, safetensors, torch
from .raw import MOMENTS, RawCheckpoint, one_line

__all__ = ["FORMATS", "MOMENTS", "RawCheckpoint", "format_of", "label", "read", "write"]

FORMATS = {".pth": torch, ".pt": torch, ".bin": torch, ".ckpt": mindspore, ".safetensors": safetensors,
           ".caffemodel": caffe}
# (package, extra) each format needs to (read, write): .ckpt and safetensors are read without their frameworks.
NEEDS = {"torch": ("torch", "torch"), "mindspore": ("mindspore", "mindspore"),
         "safetensors": ("safetensors", "safetensors"), "caffe": ("google.protobuf", "caffe")}
READ_NEEDS = ("torch", "caffe")


def format_module(path):
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise CheckpointError(f"{path}: unknown checkpoint format '{one_line(suffix, 20) or '(no extension)'}' "
                              f"(known: {', '.join(FORMATS)})")
    return FORMATS[suffix]


def format_of(path):
    """'torch', 'mindspore' or 'safetensors', from the file's extension."""
    return format_module(path).NAME


def label(fmt):
    return {m.NAME: m.LABEL for m in FORMATS.values()}[fmt]


def _need(module, what):
    """Import the package a format needs now, or say in one line how to get it."""
    package, extra = NEEDS[module.NAME]
    try:
        importlib.import_module(package)
    except ImportError:
        raise CheckpointError(f"{what} a {module.LABEL} file needs the '{package}' package: "
                              f"pip install 'sknet[{extra}]'") from None


def read(path):
    """The tensors, optimizer state and scalars of any supported file; one-line errors."""
    path = str(path)
    module = format_module(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: " + ("not a regular file" if os.path.exists(path) else "no such file"))
    if module.NAME in READ_NEEDS:
        _need(module, "reading")
    try:
        return module.read(path)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or one_line(err)}") from None


def write(path, tensors, momentum=None, scalars=None):
    """Write ``tensors`` ({name: ndarray}, in order) to ``path`` in the format its extension names.

    ``momentum`` ({name: ndarray}, trainable tensors in model.parameters() order) and
    ``scalars`` (epoch, step, recipe, lr...) make it a training checkpoint as the
    trainers write them. The same content gives the same bytes.
    """
    module = format_module(path)
    if not hasattr(module, "write"):
        raise CheckpointError(f"{path}: {module.LABEL} files are read, not written (write .pth, .ckpt "
                              f"or .safetensors)")
    _need(module, "writing")

    def write_tmp(tmp):
        try:
            module.write(tmp, tensors, momentum, scalars or {})
        except (CheckpointError, OSError):
            raise
        except Exception as err:  # the frameworks wrap a full disk in their own error types
            raise CheckpointError(f"{path}: cannot write the {module.LABEL} file: {one_line(err)}") from None

    atomic_write(path, write_tmp)
