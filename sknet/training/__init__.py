"""The one training loop, framework-free, driving a small adapter per backend.

``loop.run`` owns everything a run decides and leaves on disk (step plan, epochs, resume,
evaluation, checkpoints, metrics, progress, digests, failures); a backend's
``sknet.backends.<name>.train`` only says how its framework builds, steps, evaluates,
saves and loads (see ``loop.run`` for the adapter's methods).
"""
from .failure import FAULT_ENV, RunFailed, TrainError
from .options import Options

__all__ = ["FAULT_ENV", "Options", "RunFailed", "TrainError"]
