"""PyTorch backend: ``build(spec)`` returns a ``torch.nn.Module``."""
from .model import SKNet, build, count_trainable
from .names import from_canonical, load_canonical, to_canonical

__all__ = ["SKNet", "build", "count_trainable", "from_canonical", "load_canonical", "to_canonical"]
