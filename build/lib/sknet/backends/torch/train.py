"""PyTorch training: one process or DistributedDataParallel under torchrun (gloo on CPU, nccl on CUDA).

The schedule, weight-decay groups, data order and augmentation come from ``sknet``
(recipe, schedule, data); this file only says how PyTorch applies them. Every worker
reads its own shard of each epoch's global order, so a resumed run and an
uninterrupted one see the same batches from the same step on.
"""
import hashlib
import json
import os
import signal
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from sknet.atomic import atomic_write
from sknet.data import epoch_batches
from sknet.params import tensor_specs
from sknet.recipe import backend_device
from sknet.schedule import learning_rates, weight_decay_of
from sknet.trainer_common import (Progress, RunDir, Stop, TrainError, best_top1, default_out, epoch_row,
                                  eval_batches, eval_shards, load_run, log, make_plan, maybe_fault,
                                  on_sigterm, softmax_xent_sum, topk_correct, worker_failure)

from .model import build
from .names import to_canonical


class BatchSource(torch.utils.data.Dataset):
    """Item k is the k-th batch of a fixed list: DataLoader workers build whole batches."""

    def __init__(self, dataset, batches, epoch):
        self.dataset, self.batches, self.epoch = dataset, batches, epoch

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, k):
        x, y = self.dataset.batch(self.batches[k], self.epoch)
        return torch.from_numpy(x), torch.from_numpy(y)


def loader(dataset, batches, epoch, workers):
    # batch_size=None: the source yields ready batches in order, so workers cannot reorder them.
    return torch.utils.data.DataLoader(BatchSource(dataset, batches, epoch), batch_size=None, shuffle=False,
                                       num_workers=workers, persistent_workers=False,
                                       multiprocessing_context="fork" if workers else None)


class World:
    """Rank, size and device of this process; torchrun's environment turns on DDP."""

    def __init__(self, device_name):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want = backend_device(device_name or "auto", "torch")
        if want is None:
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cuda":
            if not torch.cuda.is_available():
                raise TrainError("device cuda asked for, but PyTorch sees no CUDA device")
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.distributed = self.size > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def all_sum(self, values):
        """Element-wise float64 sum over workers of a list of numbers."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.distributed:
            dist.all_reduce(t)
        return t.cpu().tolist()

    def average_buffers(self, model):
        """BN running statistics averaged over workers (each worker's came from its own batches)."""
        if not self.distributed:
            return
        for name, buf in model.named_buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf.div_(self.size)


def make_optimizer(model, recipe):
    """SGD with one param group per weight-decay value, built from named parameters so that the
    state_dict records ``param_names`` (the order is model.parameters() order within each group)."""
    kinds = {name: kind for name, _, kind, trainable in tensor_specs(model.spec) if trainable}
    groups = {}
    for name, p in model.named_parameters():
        groups.setdefault(weight_decay_of(name, kinds[name], recipe), []).append((name, p))
    o = recipe.optimizer
    return torch.optim.SGD([{"params": ps, "weight_decay": wd} for wd, ps in groups.items()],
                           lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, dampening=0.0)


def state_digest(model):
    """sha256 of every canonical tensor's bytes: equal digests mean bit-identical models."""
    h = hashlib.sha256()
    for name, arr in to_canonical(model).items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def save_checkpoint(path, model, optimizer, epoch, step, recipe_name):
    obj = {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
           "optimizer": optimizer.state_dict(), "epoch": int(epoch), "step": int(step),
           "recipe": str(recipe_name), "rng": {"torch": torch.get_rng_state()}}
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path, model, optimizer):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(obj["model"])
        optimizer.load_state_dict(obj["optimizer"])
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise TrainError(f"{path}: cannot resume from it: {str(err).splitlines()[0]}") from None
    if "rng" in obj and "torch" in obj["rng"]:
        torch.set_rng_state(obj["rng"]["torch"])
    return int(obj["epoch"]), int(obj["step"])


def evaluate(model, val, recipe, world, workers):
    """(val loss sum, top-1 count, top-5 count, n) over the whole val set, summed over workers."""
    model.eval()
    idx = eval_shards(len(val), world.size, world.rank)
    loss_sum, c1, c5 = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader(val, eval_batches(idx, recipe.eval_batch_size or recipe.batch_size), 0, workers):
            logits = model(x.to(world.device)).float().cpu().numpy()
            loss_sum += softmax_xent_sum(logits, y.numpy())
            k1, k5 = topk_correct(logits, y.numpy())
            c1, c5 = c1 + k1, c5 + k5
    model.train()
    return tuple(world.all_sum([loss_sum, c1, c5, len(idx)]))


def run(opts, step_hook=None):
    """Train per ``opts`` (sknet.trainer_common.Options); returns the final metrics row or None.

    ``step_hook(step, model, optimizer)`` is called after every optimizer step (tests).
    """
    world = World(opts.device)
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    recipe, spec, train, val = load_run(opts)
    torch.manual_seed(recipe.seed)
    run_dir = RunDir(opts.out or default_out(recipe, "torch"), "torch")
    if world.rank == 0:
        run_dir.make()
    model = build(spec, seed=recipe.seed).to(world.device)
    optimizer = make_optimizer(model, recipe)
    start = 0
    resume = run_dir.resume_path(opts.resume)
    if resume is not None:
        _, start = load_checkpoint(resume, model, optimizer)
        log(world.rank, f"resumed from {resume} at step {start}")
    plan = make_plan(recipe, len(train), world.size, start, opts)
    lrs = learning_rates(recipe, plan.steps_per_epoch, world.size)
    amp = recipe.amp.enabled and world.device.type == "cuda"
    amp_dtype = torch.bfloat16 if recipe.amp.dtype == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", init_scale=recipe.amp.loss_scale) if amp and recipe.amp.dtype == "fp16" else None
    if recipe.amp.enabled and not amp:
        log(world.rank, "amp: autocast runs on CUDA only here; training in float32 on the CPU")
    net = model
    if world.distributed:
        # Each worker keeps the BN statistics of its own batches, as MindSpore's data parallel does;
        # they are averaged at every checkpoint and evaluation.
        with warnings.catch_warnings():
            # torch 2.13 deprecates broadcast_buffers, but its replacement still syncs at init
            # and older torch lacks it; rank-local buffers are what is wanted here.
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[world.local_rank] if world.device.type == "cuda" else None,
                broadcast_buffers=False)
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
        world.average_buffers(model)
        if world.rank == 0:
            save_checkpoint(run_dir.last, model, optimizer, epoch_done, step, recipe.name)
        # Everyone waits for rank 0's write, so no rank reports a checkpoint that is not on disk.
        world.all_sum([0.0])
        last_good = (run_dir.last, step)

    try:
        net.train()
        while step < plan.stop_step:
            epoch = plan.epoch_of(step)
            t_epoch, loss_sum, loss_n = time.monotonic(), 0.0, 0
            batches = epoch_batches(len(train), world.size, world.rank, recipe.batch_size, recipe.seed, epoch,
                                    shuffle=True, drop_last=recipe.data.drop_last)
            skip = step - epoch * plan.steps_per_epoch
            epoch_end = (epoch + 1) * plan.steps_per_epoch
            for x, y in loader(train, batches[skip:min(len(batches), skip + plan.stop_step - step)], epoch, workers):
                lr = float(lrs[step])
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x, y = x.to(world.device, non_blocking=True), y.to(world.device, non_blocking=True)
                with torch.autocast(world.device.type, dtype=amp_dtype, enabled=amp):
                    loss = F.cross_entropy(net(x).float(), y, label_smoothing=recipe.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                step += 1
                value = float(loss.detach())
                loss_sum, loss_n = loss_sum + value, loss_n + 1
                if step_hook is not None:
                    step_hook(step, model, optimizer)
                progress.update(step, epoch, value, lr)
                if step % plan.ckpt_every == 0 and step != epoch_end:
                    checkpoint(epoch)
                maybe_fault(world.rank, step)
            if step == epoch_end:
                world.average_buffers(model)
                val_stats = evaluate(model, val, recipe, world, workers)
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
                        save_checkpoint(run_dir.best, model, optimizer, epoch + 1, step, recipe.name)
                    run_dir.plot(rows, f"{spec.name} / {recipe.name} (torch, {world.size} worker(s))")
            elif step == plan.stop_step:
                checkpoint(epoch)
    except (Stop, RuntimeError) as err:  # gloo/nccl errors (DistBackendError) are RuntimeErrors
        failure = worker_failure(err, world.rank, world.distributed, step, last_good)
        if failure is None:
            raise
        raise failure from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    digest = state_digest(model)
    digests = run_dir.path / "digests"
    digests.mkdir(parents=True, exist_ok=True)
    atomic_write(digests / f"rank{world.rank}.json",
                 lambda tmp: open(tmp, "w").write(json.dumps({"rank": world.rank, "step": step, "sha256": digest})))
    if world.distributed:
        dist.barrier()
        dist.destroy_process_group()
    if world.rank == 0:
        log(0, f"done: step {step}, {time.monotonic() - t_run:.1f} s, checkpoint {run_dir.last}")
    return rows[-1] if rows else None
