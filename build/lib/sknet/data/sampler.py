"""Which images each worker sees in an epoch, and in which batches.

The order depends only on (seed, epoch), never on a framework's global RNG, so torchrun
and msrun workers, and a resumed run, see the same batches. Sharding follows PyTorch's
DistributedSampler: permute, cut (drop_last) or wrap-pad to a multiple of the world
size, then worker ``rank`` takes every ``world_size``-th index from ``rank`` on.
"""
import numpy as np


def epoch_order(n, seed, epoch, shuffle=True):
    """The global order of the ``n`` dataset indices in ``epoch`` (tag 2: apart from the images' RNG)."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 2, epoch, 0])))
    return rng.permutation(n).astype(np.int64)


def shard_indices(n, world_size=1, rank=0, seed=0, epoch=0, shuffle=True, drop_last=True, pad=True):
    """The dataset indices of worker ``rank`` in ``epoch``.

    drop_last: every worker gets n // world_size indices and the remainder is skipped this
    epoch. Otherwise, with ``pad``, the order wraps around so every worker gets
    ceil(n / world_size) (a few images twice, as DistributedSampler); without ``pad``
    (evaluation) the shards are disjoint and cover all n, their sizes differing by at most one.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size} workers")
    order = epoch_order(n, seed, epoch, shuffle)
    if drop_last:
        order = order[: n - n % world_size]
    elif pad and n % world_size:
        order = np.resize(order, -(-n // world_size) * world_size)
    return order[rank::world_size]


def steps_per_epoch(n, world_size, batch_size, drop_last=True):
    """Optimizer steps per epoch: batches of one worker's shard (all workers have the same count)."""
    per_worker = n // world_size if drop_last else -(-n // world_size)
    return per_worker // batch_size if drop_last else -(-per_worker // batch_size)


def epoch_batches(n, world_size, rank, batch_size, seed, epoch, shuffle=True, drop_last=True):
    """Worker ``rank``'s batches of ``epoch`` as index arrays; resume at step k with ``[k:]``."""
    shard = shard_indices(n, world_size, rank, seed, epoch, shuffle, drop_last)
    count = steps_per_epoch(n, world_size, batch_size, drop_last)
    return [shard[i * batch_size:(i + 1) * batch_size] for i in range(count)]
