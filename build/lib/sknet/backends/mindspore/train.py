"""MindSpore training: one process, or data parallel under msrun (``mindspore.communication.init``).

The optimizer is ``nn.Momentum`` with the recipe's per-step lr array (indexed by its
``global_step``) and one param group per weight-decay value. The train step is our
own cell rather than ``nn.TrainOneStepWithLossScaleCell``: that cell's overflow check
is an Ascend-only op, so on the CPU it cannot run at all; ours multiplies the loss by
the recipe's fixed scale and divides the (worker-averaged) gradients by it, which is
the same arithmetic on every device.
"""
import hashlib
import json
import os
import signal
import time

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from sknet.atomic import atomic_write
from sknet.data import epoch_batches
from sknet.params import tensor_specs
from sknet.recipe import backend_device
from sknet.schedule import learning_rates, weight_decay_of
from sknet.trainer_common import (Progress, RunDir, Stop, TrainError, best_top1, default_out, epoch_row,
                                  eval_batches, eval_shards, load_run, log, make_plan, maybe_fault,
                                  on_sigterm, softmax_xent_sum, topk_correct, worker_failure)

from . import layers
from .model import build
from .names import ms_name, to_canonical


def build_net(spec, seed, device):
    """The model for training or evaluation on ``device``.

    On the CPU with oneDNN held to AVX2 (sknet.train.prepare_mindspore), MindSpore's own
    Conv2D is about 10x faster than the im2col fast path of sknet.backends.mindspore.layers
    (measured 0.43 s vs 4.0 s for 100 sknet_small images), so the cells are built plain.
    """
    if device == "CPU" and os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2":
        with layers.plain_math():
            return build(spec, seed=seed)
    return build(spec, seed=seed)


class BatchSource:
    """Item k is the k-th batch of a fixed list, for GeneratorDataset workers (random access, in order)."""

    def __init__(self, dataset, batches, epoch):
        self.dataset, self.batches, self.epoch = dataset, batches, epoch

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, k):
        x, y = self.dataset.batch(self.batches[k], self.epoch)
        return x, y.astype(np.int32)


def batches_of(dataset, batches, epoch, workers):
    """(x, y) numpy batches in order; decoded by GeneratorDataset worker processes when workers > 0."""
    source = BatchSource(dataset, batches, epoch)
    if workers == 0 or len(source) == 0:
        for k in range(len(source)):
            yield source[k]
        return
    import mindspore.dataset as ds

    gen = ds.GeneratorDataset(source, column_names=["image", "label"], shuffle=False,
                              num_parallel_workers=workers, python_multiprocessing=True)
    yield from gen.create_tuple_iterator(num_epochs=1, output_numpy=True)


class World:
    """Rank and size; under msrun (its MS_ROLE/MS_WORKER_NUM environment) data parallel is turned on."""

    def __init__(self, device_name, recipe_device):
        target = backend_device(device_name or recipe_device, "mindspore") or "CPU"
        ms.set_context(mode=ms.PYNATIVE_MODE)
        ms.set_device(target)
        self.device = target
        self.distributed = "MS_WORKER_NUM" in os.environ and int(os.environ["MS_WORKER_NUM"]) > 1
        if self.distributed:
            from mindspore.communication import get_group_size, get_rank, init

            init()
            self.rank, self.size = get_rank(), get_group_size()
            ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                         device_num=self.size)
            self._sum = ops.AllReduce()
        else:
            self.rank, self.size = 0, 1

    def all_sum(self, values):
        if not self.distributed:
            return [float(v) for v in values]
        # float32 on the wire (CPU AllReduce has no float64): counts stay exact below 2**24.
        out = self._sum(ms.Tensor(np.asarray(values, np.float32))).asnumpy()
        return [float(v) for v in out]

    def average_buffers(self, net):
        """BN moving statistics averaged over workers (data parallel leaves each worker its own)."""
        if not self.distributed:
            return
        for p in net.get_parameters():
            if not p.requires_grad:
                # In place: set_data would swap the buffer under the compiled train step,
                # whose later BN updates would then be lost.
                ops.assign(p, self._sum(p.value()) / self.size)


class NetWithLoss(nn.Cell):
    def __init__(self, net, loss_fn):
        super().__init__(auto_prefix=False)
        self.net, self.loss_fn = net, loss_fn

    def construct(self, x, y):
        # Logits in float32 whatever the AMP level: the loss and its smoothing in full precision.
        return self.loss_fn(self.net(x).astype(ms.float32), y)


class TrainStep(nn.Cell):
    """Forward, scaled backward, worker-mean of gradients, unscale, nn.Momentum update."""

    def __init__(self, net, loss_fn, optimizer, loss_scale, distributed, size):
        super().__init__(auto_prefix=False)
        self.net_with_loss = NetWithLoss(net, loss_fn)
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.scale = float(loss_scale)
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.distributed = distributed
        self.reducer = nn.DistributedGradReducer(self.weights, mean=True, degree=size) if distributed else None
        self.hyper_map = ops.HyperMap()

    def construct(self, x, y):
        loss = self.net_with_loss(x, y)
        sens = ops.fill(loss.dtype, loss.shape, self.scale)
        grads = self.grad(self.net_with_loss, self.weights)(x, y, sens)
        if self.distributed:
            grads = self.reducer(grads)
        if self.scale != 1.0:
            grads = self.hyper_map(ops.partial(_unscale, self.scale), grads)
        self.optimizer(grads)
        return loss


_unscale = ops.MultitypeFuncGraph("unscale")


@_unscale.register("Number", "Tensor")
def _unscale_tensor(scale, grad):
    return grad / scale


def make_optimizer(net, recipe, lrs):
    """nn.Momentum over per-weight-decay groups, with the schedule as its per-step lr array."""
    kinds = {ms_name(name, kind): (name, kind) for name, _, kind, trainable in tensor_specs(net.spec) if trainable}
    params = net.trainable_params()
    groups = {}
    for p in params:
        name, kind = kinds[p.name]
        groups.setdefault(weight_decay_of(name, kind, recipe), []).append(p)
    o = recipe.optimizer
    spec = [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()]
    # order_params keeps moments and updates in the model's parameter order, as PyTorch's.
    spec.append({"order_params": params})
    return nn.Momentum(spec, learning_rate=ms.Tensor(np.asarray(lrs, np.float32)), momentum=o.momentum,
                       use_nesterov=o.nesterov)


def state_digest(net):
    h = hashlib.sha256()
    for name, arr in to_canonical(net).items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def save_checkpoint(path, net, optimizer, epoch, step, lrs):
    entries = [{"name": p.name, "data": ms.Tensor(p.asnumpy())} for p in net.get_parameters()]
    entries += [{"name": m.name, "data": ms.Tensor(m.asnumpy())} for m in optimizer.moments]
    entries += [{"name": "global_step", "data": ms.Tensor(np.array([step], np.int32))},
                {"name": "learning_rate", "data": ms.Tensor(np.asarray(lrs, np.float32))}]
    append = {"epoch": int(epoch), "step": int(step)}
    atomic_write(path, lambda tmp: ms.save_checkpoint(entries, tmp, append_dict=append))


def load_checkpoint(path, net, optimizer):
    try:
        saved = ms.load_checkpoint(str(path))
    except (ValueError, RuntimeError, OSError) as err:
        raise TrainError(f"{path}: cannot resume from it: {str(err).splitlines()[0]}") from None
    targets = {p.name: p for p in net.get_parameters()}
    targets.update({m.name: m for m in optimizer.moments})
    missing = [n for n in targets if n not in saved]
    if missing or "step" not in saved:
        raise TrainError(f"{path}: cannot resume from it: lacks {', '.join((missing or ['step'])[:3])}")
    for name, p in targets.items():
        value = saved[name].asnumpy()
        if value.shape != tuple(p.shape):
            raise TrainError(f"{path}: '{name}' has shape {value.shape}, the model {tuple(p.shape)}")
        p.set_data(ms.Tensor(value))
    step = int(np.asarray(saved["step"].asnumpy()).reshape(-1)[0])
    epoch = int(np.asarray(saved["epoch"].asnumpy()).reshape(-1)[0]) if "epoch" in saved else 0
    optimizer.global_step.set_data(ms.Tensor(np.array([step], np.int32)))
    return epoch, step


def evaluate(net, forward, val, recipe, world, workers):
    net.set_train(False)
    idx = eval_shards(len(val), world.size, world.rank)
    loss_sum, c1, c5 = 0.0, 0, 0
    for x, y in batches_of(val, eval_batches(idx, recipe.eval_batch_size or recipe.batch_size), 0, workers):
        logits = forward(ms.Tensor(x)).asnumpy().astype(np.float32)
        loss_sum += softmax_xent_sum(logits, y)
        k1, k5 = topk_correct(logits, y)
        c1, c5 = c1 + k1, c5 + k5
    net.set_train(True)
    return tuple(world.all_sum([loss_sum, c1, c5, len(idx)]))


def run(opts, step_hook=None):
    """Train per ``opts``; ``step_hook(step, net, optimizer)`` after every step (tests)."""
    recipe, spec, train, val = load_run(opts)
    world = World(opts.device, recipe.device)
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    ms.set_seed(recipe.seed)
    run_dir = RunDir(opts.out or default_out(recipe, "mindspore"), "mindspore")
    if world.rank == 0:
        run_dir.make()
    net = build_net(spec, recipe.seed, world.device)
    plan = make_plan(recipe, len(train), world.size, 0, opts)
    lrs = learning_rates(recipe, plan.steps_per_epoch, world.size)
    amp = recipe.amp.enabled and world.device != "CPU"
    if recipe.amp.enabled and not amp:
        log(world.rank, "amp: MindSpore has no float16/bfloat16 training kernels on the CPU; training in float32")
    if amp:
        net = ms.amp.auto_mixed_precision(net, recipe.amp.level)
        net.spec = spec
    optimizer = make_optimizer(net, recipe, lrs)
    start = 0
    resume = run_dir.resume_path(opts.resume)
    if resume is not None:
        _, start = load_checkpoint(resume, net, optimizer)
        log(world.rank, f"resumed from {resume} at step {start}")
    plan = make_plan(recipe, len(train), world.size, start, opts)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    step_cell = TrainStep(net, loss_fn, optimizer, recipe.amp.loss_scale if amp else 1.0, world.distributed, world.size)
    step_cell.set_train(True)
    train_step = ms.jit(step_cell)
    infer = ms.jit(net)
    workers = recipe.data.num_workers
    rows = run_dir.read_metrics(upto_step=start) if world.rank == 0 else []
    progress = Progress(plan.stop_step, start, recipe.batch_size * world.size, enabled=world.rank == 0 and not opts.quiet)
    t_run = time.monotonic()
    step, last_good = start, (resume, start)
    log(world.rank, f"training {spec.name} on {world.size} worker(s), {world.device}, "
                    f"{plan.steps_per_epoch} steps/epoch, global batch {recipe.batch_size * world.size}, "
                    f"steps {start}->{plan.stop_step}")

    def checkpoint(epoch_done):
        nonlocal last_good
        world.average_buffers(net)
        if world.rank == 0:
            save_checkpoint(run_dir.last, net, optimizer, epoch_done, step, lrs)
        # Everyone waits for rank 0's write, so no rank reports a checkpoint that is not on disk.
        world.all_sum([0.0])
        last_good = (run_dir.last, step)

    try:
        net.set_train(True)
        while step < plan.stop_step:
            epoch = plan.epoch_of(step)
            t_epoch, loss_sum, loss_n = time.monotonic(), 0.0, 0
            batches = epoch_batches(len(train), world.size, world.rank, recipe.batch_size, recipe.seed, epoch,
                                    shuffle=True, drop_last=recipe.data.drop_last)
            skip = step - epoch * plan.steps_per_epoch
            epoch_end = (epoch + 1) * plan.steps_per_epoch
            for x, y in batches_of(train, batches[skip:min(len(batches), skip + plan.stop_step - step)], epoch, workers):
                loss = train_step(ms.Tensor(x), ms.Tensor(y))
                lr = float(lrs[step])
                step += 1
                value = float(loss.asnumpy())
                loss_sum, loss_n = loss_sum + value, loss_n + 1
                if step_hook is not None:
                    step_hook(step, net, optimizer)
                progress.update(step, epoch, value, lr)
                if step % plan.ckpt_every == 0 and step != epoch_end:
                    checkpoint(epoch)
                maybe_fault(world.rank, step)
            if step == epoch_end:
                world.average_buffers(net)
                val_stats = evaluate(net, infer, val, recipe, world, workers)
                train_loss = world.all_sum([loss_sum, loss_n])
                if world.rank == 0:
                    row = epoch_row(epoch + 1, step, train_loss[0] / max(1, train_loss[1]), val_stats, lrs[step - 1],
                                    progress.rate(step), time.monotonic() - t_epoch, time.monotonic() - t_run)
                    improved = row["top1"] > best_top1(rows)
                    rows.append(row)
                    run_dir.write_metrics(rows)
                    print(f"epoch {epoch + 1}/{plan.epochs}: val top-1 {row['top1']:.2f} % top-5 "
                          f"{row['top5']:.2f} % loss {row['val_loss']:.4f} ({row['epoch_s']:.0f} s)", flush=True)
                checkpoint(epoch + 1)
                if world.rank == 0:
                    if improved:
                        save_checkpoint(run_dir.best, net, optimizer, epoch + 1, step, lrs)
                    run_dir.plot(rows, f"{spec.name} / {recipe.name} (mindspore, {world.size} worker(s))")
            elif step == plan.stop_step:
                checkpoint(epoch)
    except (Stop, RuntimeError) as err:
        failure = worker_failure(err, world.rank, world.distributed, step, last_good)
        if failure is None:
            raise
        raise failure from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    digests = run_dir.path / "digests"
    digests.mkdir(parents=True, exist_ok=True)
    digest = state_digest(net)
    atomic_write(digests / f"rank{world.rank}.json",
                 lambda tmp: open(tmp, "w").write(json.dumps({"rank": world.rank, "step": step, "sha256": digest})))
    if world.rank == 0:
        log(0, f"done: step {step}, {time.monotonic() - t_run:.1f} s, checkpoint {run_dir.last}")
    return rows[-1] if rows else None
