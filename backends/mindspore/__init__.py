"""MindSpore backend: ``build(spec)`` returns a ``mindspore.nn.Cell`` for PYNATIVE and GRAPH mode.

Importing it sets MindSpore's environment, before MindSpore itself is imported, for every
entry point alike (``create_model``, ``sknet validate``/``train``/``parity``/``export``):
- ``GLOG_v=3``: MindSpore logs every deprecation at WARNING to stderr; errors only unless
  the user says.
- ``ONEDNN_MAX_CPU_ISA=AVX2`` unless the user chose: on AVX-512 CPUs oneDNN picks, for
  MindSpore's plain NCHW tensors, a convolution that runs a reference loop (~60x slower
  than its AVX2 GEMM path, docs/training.md). oneDNN reads the variable once, when it
  first runs, so the default is set only while MindSpore is not loaded yet; otherwise
  ``ISA_DEFAULT_TOO_LATE`` says so and ``fast.resolve_options`` does not count on it.
"""
import os
import sys

os.environ.setdefault("GLOG_v", "3")
ISA_DEFAULT_TOO_LATE = "mindspore" in sys.modules and "ONEDNN_MAX_CPU_ISA" not in os.environ
if not ISA_DEFAULT_TOO_LATE:
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

from .fast import FastOptions, accelerate, resolve_options  # noqa: E402
from .model import SKNet, build, count_trainable  # noqa: E402
from .names import load_canonical, ms_name, to_canonical  # noqa: E402



def use_device(target="CPU"):
    """``mindspore.set_device(target)``, also in a process that already ran a kernel on it.

    A kernel run before any ``set_device`` (e.g. an export or a ``create_model`` call
    earlier in the process) starts the runtime on the default target, and a later
    ``set_device`` of that same target then raises; a different target still does.
    """
    import mindspore as ms

    try:
        ms.set_device(target)
    except RuntimeError:
        if ms.get_context("device_target") != target:
            raise


__all__ = ["FastOptions", "SKNet", "accelerate", "build", "count_trainable", "load_canonical", "ms_name",
           "resolve_options", "to_canonical", "use_device"]
