"""PyTorch's training adapter for ``sknet.training.loop``: one process, or DDP under torchrun.

The loop owns the run (plan, resume, evaluation, checkpoints, metrics); this file only
says how PyTorch applies a step: DistributedDataParallel (gloo on the CPU, nccl on CUDA)
with rank-local BN statistics (or SyncBatchNorm on CUDA), SGD with one param group per
weight-decay value, gradient accumulation and clipping, AMP (autocast, + GradScaler for
fp16), the weights' moving average, DataLoader workers that build whole batches.
"""
import contextlib
import copy
import os
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F

from sknet.atomic import atomic_write
from sknet.data import step_normalization
from sknet.formats.torch import save
from sknet.recipe import backend_device
from sknet.schedule import param_groups
from sknet.training import TrainError
from sknet.training.batches import BatchSource
from sknet.training.cluster import restart_count
from sknet.training.heap import keep_freed_memory
from sknet.training.progress import log
from sknet.training.rundir import ema_path

from .model import build
from .names import to_canonical


def init_group(backend, rank, size):
    """init_process_group; after a torchrun restart on a store of its own attempt.

    torchrun (2.5 and later) keeps one rendezvous TCPStore for all attempts and env:// adds no
    per-attempt prefix, so a restarted group reads the dead group's addresses and gloo/nccl
    fail to connect (pytorch#135712); TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 on torchrun is the
    launcher-side fix, this one needs nothing from whoever starts the job.
    """
    attempt = restart_count()
    if attempt == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend)
        return
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size, is_master=False)
    dist.init_process_group(backend, store=dist.PrefixStore(f"sknet/attempt{attempt}", store), rank=rank,
                            world_size=size)


class World:
    """Rank, size and device of this process; torchrun's environment turns on DDP."""

    def __init__(self, device_name, recipe_device):
        # The recipe's device is not consulted: recipes name MindSpore's targets (ascend), and
        # PyTorch picks CUDA when it sees one unless the command line says otherwise.
        del recipe_device
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
            init_group("nccl" if self.device.type == "cuda" else "gloo", self.rank, self.size)

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
        for _, buf in model.named_buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf.div_(self.size)

    def close(self):
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()


def sync_batchnorm(model, world):
    """Every BatchNorm2d as a SyncBatchNorm (same parameters and names): statistics over the global batch."""
    if world.distributed and world.device.type != "cuda":
        raise TrainError("sync_bn: torch.nn.SyncBatchNorm runs on CUDA only, not on the CPU under gloo; "
                         "set sync_bn: false (per-worker BN, statistics averaged at checkpoints)")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def make_optimizer(model, spec, recipe):
    """SGD with one param group per weight-decay value, built from named parameters so that the
    state_dict records ``param_names`` (the order is model.parameters() order within each group)."""
    named = dict(model.named_parameters())
    o = recipe.optimizer
    return torch.optim.SGD([{"params": [(n, named[n]) for n in names], "weight_decay": wd}
                            for wd, names in param_groups(spec, recipe)],
                           lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, dampening=0.0)


class Adapter:
    """The model, its optimizer and how one step, one forward and one checkpoint go on PyTorch."""

    def __init__(self, world):
        self.world = world
        self.model = self.optimizer = self.ema = None
        self.skipped = False

    def build(self, spec, recipe, lrs):
        """Seeded model and SGD; ``lrs`` is not kept: the loop hands each step its lr."""
        del lrs
        world = self.world
        if world.device.type == "cpu":
            keep_freed_memory()   # each step's activations reuse the last step's pages (sknet/training/heap.py)
        torch.manual_seed(recipe.seed)
        self.recipe = recipe
        # Trained with fast.accelerate's paths: the same function (tests/test_torch_fast.py),
        # a faster step (docs/performance.md); checkpoints and names do not change.
        self.model = build(spec, seed=recipe.seed, fast=True).to(world.device)
        if recipe.sync_bn:
            self.model = sync_batchnorm(self.model, world)
        self.optimizer = make_optimizer(self.model, spec, recipe)
        # Autocast on the run's device (CUDA, or the CPU's bf16/fp16 kernels); BN runs in float32
        # under autocast's own policy, the logits are cast to float32 before the loss.
        self.amp = recipe.amp.enabled
        self.amp_dtype = torch.bfloat16 if recipe.amp.dtype == "bf16" else torch.float16
        # bf16 has float32's range: no loss scale, nothing overflows that float32 would not.
        self.scaler = (torch.amp.GradScaler(world.device.type, init_scale=recipe.amp.loss_scale)
                       if self.amp and recipe.amp.dtype == "fp16" else None)
        self.accumulation, self.clip = recipe.grad.accumulation, recipe.grad.clip_norm
        mean, std = step_normalization(recipe, spec)
        self.mean = torch.from_numpy(mean).reshape(1, -1, 1, 1).to(world.device)
        self.std = torch.from_numpy(std).reshape(1, -1, 1, 1).to(world.device)
        self.scale = torch.tensor(1 / 255, dtype=torch.float32, device=world.device)
        if recipe.ema.enabled:
            self.ema = copy.deepcopy(self.model).requires_grad_(False).train(False)
            pairs = list(zip(self.ema.state_dict().values(), self.model.state_dict().values()))
            self._ema_float = [(e, m) for e, m in pairs if e.is_floating_point()]
            self._ema_other = [(e, m) for e, m in pairs if not e.is_floating_point()]
        self.net = self.model
        if world.distributed:
            # Each worker keeps the BN statistics of its own batches, as MindSpore's data parallel does;
            # the loop averages them at every checkpoint and evaluation.
            with warnings.catch_warnings():
                # torch 2.13 deprecates broadcast_buffers, but its replacement still syncs at init
                # and older torch lacks it; rank-local buffers are what is wanted here.
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.nn.parallel.DistributedDataParallel(
                    self.model, device_ids=[world.local_rank] if world.device.type == "cuda" else None,
                    broadcast_buffers=False)

    def set_train(self, mode):
        self.model.train(mode)

    def _images(self, x):
        """A numpy batch on the device; uint8 ones (sknet.data's) normalised there, as
        ``sknet.data.normalize_batch`` does: the same float32 operations, the same values."""
        t = torch.from_numpy(x).to(self.world.device, non_blocking=True)
        if t.dtype != torch.uint8:
            return t
        return t.to(torch.float32).mul_(self.scale).sub_(self.mean).div_(self.std)

    def step(self, x, y, lr):
        """One optimizer step over ``grad.accumulation`` equal micro-batches of ``x``; their mean loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        dev = self.world.device
        x, y = self._images(x), torch.from_numpy(y).to(dev, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i, (xs, ys) in enumerate(zip(x.chunk(self.accumulation), y.chunk(self.accumulation))):
            last = i == self.accumulation - 1
            # DDP all-reduces on the last micro-batch only: the sum of the local sums, averaged.
            sync = contextlib.nullcontext() if last or self.net is self.model else self.net.no_sync()
            with sync:
                with torch.autocast(dev.type, dtype=self.amp_dtype, enabled=self.amp):
                    loss = F.cross_entropy(self.net(xs).float(), ys, label_smoothing=self.recipe.label_smoothing)
                part = loss / self.accumulation
                (self.scaler.scale(part) if self.scaler is not None else part).backward()
            total += float(loss.detach())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        if self.scaler is not None:
            before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # GradScaler lowers its scale exactly when it found inf/NaN gradients and skipped the step.
            self.skipped = self.scaler.get_scale() < before
        else:
            self.optimizer.step()
        return total / self.accumulation

    @torch.no_grad()
    def update_ema(self, decay):
        """ema += (w - ema) * (1 - decay) for every float tensor (BN statistics too); counters copied."""
        torch._foreach_lerp_([e for e, _ in self._ema_float], [m for _, m in self._ema_float], 1.0 - decay)
        for e, m in self._ema_other:
            e.copy_(m)

    def logits(self, x, ema=False):
        with torch.no_grad():
            model = self.ema if ema else self.model
            return model(self._images(x)).float().cpu().numpy()

    def batches(self, dataset, index_lists, epoch, workers):
        # batch_size=None: the source yields ready batches in order, so workers cannot reorder them.
        loader = torch.utils.data.DataLoader(BatchSource(dataset, index_lists, epoch), batch_size=None,
                                             shuffle=False, num_workers=workers, persistent_workers=False,
                                             multiprocessing_context="fork" if workers else None)
        for x, y in loader:
            yield x.numpy(), y.numpy()

    def save(self, path, epoch, step):
        if self.ema is not None:
            # First: a checkpoint on disk always has its EMA file at least as new.
            ema = {"model": {k: v.detach().cpu().clone() for k, v in self.ema.state_dict().items()},
                   "epoch": int(epoch), "step": int(step), "recipe": str(self.recipe.name)}
            atomic_write(ema_path(path), lambda tmp: save(tmp, ema))
        obj = {"model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
               "optimizer": self.optimizer.state_dict(), "epoch": int(epoch), "step": int(step),
               "recipe": str(self.recipe.name), "rng": {"torch": torch.get_rng_state()}}
        atomic_write(path, lambda tmp: save(tmp, obj))

    def load(self, path):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(obj["model"])
            self.optimizer.load_state_dict(obj["optimizer"])
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise TrainError(f"{path}: cannot resume from it: {str(err).splitlines()[0]}") from None
        if "rng" in obj and "torch" in obj["rng"]:
            torch.set_rng_state(obj["rng"]["torch"])
        if self.ema is not None:
            self._load_ema(path, int(obj["step"]))
        return int(obj["epoch"]), int(obj["step"])

    def _load_ema(self, path, step):
        where = ema_path(path)
        try:
            obj = torch.load(where, map_location="cpu", weights_only=True)
            if int(obj["step"]) != step:
                raise ValueError(f"it is at step {obj['step']}, {path} at step {step}")
            self.ema.load_state_dict(obj["model"])
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as err:
            raise TrainError(f"{where}: cannot resume the EMA weights from it: {str(err).splitlines()[0]}") from None

    def canonical_state(self):
        return to_canonical(self.model)
