"""PyTorch backend: ``build(spec)`` returns a ``torch.nn.Module``; ``accelerate(model)`` its fast paths."""
from .fast import accelerate
from .model import SKNet, build, count_trainable
from .names import from_canonical, load_canonical, to_canonical

__all__ = ["SKNet", "accelerate", "build", "count_trainable", "from_canonical", "load_canonical", "to_canonical"]
