"""Stochastic depth's random decisions, drawn on the host in NumPy.

Each framework has its own random generator, so two backends seeded alike would still
drop different blocks. A model draws its decisions here instead, from one generator
seeded with the model's seed and shared by its blocks in the order they run: PyTorch and
MindSpore, seeded alike and fed the same batches, drop the same samples' branches in the
same blocks, and ``sknet parity --checks droppath`` can compare them. The cost is one
(batch,) array per block and step, copied to the device.
"""
import numpy as np


class DropSource:
    """Per-sample keep scales for stochastic depth (timm's ``drop_path``): each sample's
    residual branch is kept with probability 1 - rate and then scaled by 1 / (1 - rate)."""

    def __init__(self, seed=0):
        self.seed = seed
        self.rng = np.random.Generator(np.random.PCG64([seed, 0x5D]))
        self.dropped = 0  # samples dropped so far: what a parity check reports

    def keep_scales(self, batch, rate):
        keep = 1.0 - rate
        kept = self.rng.random(batch) < keep
        self.dropped += int(batch - kept.sum())
        return (kept / keep).astype(np.float32)
