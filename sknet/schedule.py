"""The learning rate of every optimizer step and the weight decay of every tensor.

Both backends take these numbers as they are: PyTorch sets each param group's lr
from ``learning_rates`` before every step, MindSpore's nn.Momentum gets the same
array as its per-step learning rate. So the schedule is written once, here, in
float64, in the epoch units mindcv uses (a step ``i`` is at epoch ``i / steps_per_epoch``).
"""
import math

import numpy as np

from .errors import SpecError


def peak_lr(recipe, world_size=1):
    """The recipe's lr scaled linearly by global batch / base batch (Goyal et al.); the global
    batch counts accumulated micro-batches, as one optimizer step sees them all."""
    from .recipe import global_batch

    opt = recipe.optimizer
    if opt.base_batch is None:
        return float(opt.lr)
    return float(opt.lr) * global_batch(recipe, world_size) / opt.base_batch


def learning_rates(recipe, steps_per_epoch, world_size=1):
    """float64 lr for each global optimizer step of the whole run (``epochs * steps_per_epoch``).

    Warm-up rises linearly from ``warmup_factor * peak`` over ``warmup_epochs``; then
    cosine decays from the peak to ``min_lr`` over ``decay_epochs`` (and stays there), or
    the step kind multiplies by ``gamma`` every ``step_epochs`` epochs counted from the
    start of training (or at each of ``milestones``). With ``per_step: false`` the epoch
    position is floored, so the lr changes once per epoch.
    """
    if steps_per_epoch < 1:
        raise SpecError(recipe.source, "batch_size",
                        f"gives {steps_per_epoch} steps per epoch: the dataset shard is smaller than one batch")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    sched = recipe.schedule
    peak = peak_lr(recipe, world_size)
    total = recipe.epochs * steps_per_epoch
    steps = np.arange(total, dtype=np.int64)
    t = steps / float(steps_per_epoch)
    if not sched.per_step:
        t = np.floor(t)
    warm = float(sched.warmup_epochs)
    if sched.kind == "cosine":
        span = float(sched.decay_epochs) if sched.decay_epochs is not None else recipe.epochs - warm
        tc = np.minimum(t - warm, span)
        lr = sched.min_lr + 0.5 * (peak - sched.min_lr) * (1.0 + np.cos(math.pi * tc / span))
    elif sched.kind == "step" and sched.milestones:
        passed = sum((steps >= m * steps_per_epoch).astype(np.int64) for m in sched.milestones)
        lr = peak * sched.gamma ** passed.astype(np.float64)
    elif sched.kind == "step":
        # Integer division of the step index keeps the boundaries exact at any steps_per_epoch.
        lr = peak * sched.gamma ** (steps // (sched.step_epochs * steps_per_epoch)).astype(np.float64)
    else:
        lr = np.full(total, peak)
    if warm > 0:
        in_warmup = t < warm
        start = sched.warmup_factor * peak
        lr = np.where(in_warmup, start + (peak - start) * (t / warm), lr)
    return lr.astype(np.float64)


def weight_decay_of(canonical_name, kind, recipe):
    """The weight decay of one canonical tensor (kind conv|bn|linear, as in ``sknet.params``).

    Conv and linear weights always get the recipe's decay; BN gamma/beta and biases only
    with ``optimizer.decay_norm_and_bias``; BN running statistics are not trained.
    """
    wd = float(recipe.optimizer.weight_decay)
    suffix = canonical_name.rsplit(".", 1)[-1]
    if suffix in ("running_mean", "running_var", "num_batches_tracked"):
        return 0.0
    if kind in ("conv", "linear") and suffix == "weight":
        return wd
    if kind not in ("conv", "linear", "bn"):
        raise ValueError(f"unknown tensor kind '{kind}' for {canonical_name}")
    return wd if recipe.optimizer.decay_norm_and_bias else 0.0


def param_groups(spec, recipe):
    """[(weight decay, [canonical names])] for the trainable tensors, in build order, one group per value."""
    from .params import tensor_specs

    groups = {}
    for name, _, kind, trainable in tensor_specs(spec):
        if trainable:
            groups.setdefault(weight_decay_of(name, kind, recipe), []).append(name)
    return list(groups.items())
