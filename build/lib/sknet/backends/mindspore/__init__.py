"""MindSpore backend: ``build(spec)`` returns a ``mindspore.nn.Cell`` for PYNATIVE and GRAPH mode."""
import os

# MindSpore logs every deprecation at WARNING to stderr; keep it to errors unless the user says.
os.environ.setdefault("GLOG_v", "3")

from .model import SKNet, build, count_trainable
from .names import load_canonical, ms_name, to_canonical

__all__ = ["SKNet", "build", "count_trainable", "load_canonical", "ms_name", "to_canonical"]
