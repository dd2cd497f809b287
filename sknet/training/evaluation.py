"""Validation scores computed in NumPy from any backend's logits, so every backend scores alike."""
import numpy as np


def topk_correct(logits, labels, ks=(1, 5)):
    """Counts of samples whose label is among the top-k logits, for each k (k capped at the classes)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1, 1)
    kmax = min(max(ks), logits.shape[1])
    # Stable descending order: ties go to the lower class index on every backend.
    top = np.argsort(-logits, axis=1, kind="stable")[:, :kmax]
    hit = top == labels
    return [int(hit[:, :min(k, kmax)].any(axis=1).sum()) for k in ks]


def softmax_xent_sum(logits, labels):
    """Summed cross-entropy (no smoothing) in float64: the validation loss, same on every backend."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), np.asarray(labels)].sum())


def eval_shards(n, world_size, rank):
    """Disjoint, contiguous, covering index ranges of the validation set per worker."""
    per = -(-n // world_size)
    return np.arange(rank * per, min(n, (rank + 1) * per), dtype=np.int64)


def eval_batches(indices, batch_size):
    return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]


def evaluate(adapter, world, val, batch_size, workers, ema=False):
    """(val loss sum, top-1 count, top-5 count, n) over the whole val set, summed over workers
    (``ema``: of the adapter's moving-average model)."""
    adapter.set_train(False)
    idx = eval_shards(len(val), world.size, world.rank)
    loss_sum, c1, c5 = 0.0, 0, 0
    for x, y in adapter.batches(val, eval_batches(idx, batch_size), 0, workers):
        logits = adapter.logits(x, ema)
        loss_sum += softmax_xent_sum(logits, y)
        k1, k5 = topk_correct(logits, y)
        c1, c5 = c1 + k1, c5 + k5
    adapter.set_train(True)
    return tuple(world.all_sum([loss_sum, c1, c5, len(idx)]))

