"""What both training backends share: run folder, checkpoint names, metrics, curves, progress, top-k.

Nothing here imports a framework. The backends (``backends/<name>/train.py``) own the
model, optimizer and collectives; this module owns what a run leaves on disk and what
it prints, so that a PyTorch run and a MindSpore run of one recipe look the same.
"""
import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .errors import SKNetError

CKPT_SUFFIX = {"torch": ".pth", "mindspore": ".ckpt"}
METRIC_FIELDS = ("epoch", "step", "train_loss", "val_loss", "top1", "top5", "lr", "images_per_s",
                 "epoch_s", "wall_s")
# Fault injection for the launcher tests: "RANK:STEP" makes that rank SIGKILL itself
# right after finishing global step STEP (checkpoints up to then are on disk).
FAULT_ENV = "SKNET_FAULT_KILL"


class TrainError(SKNetError):
    """A training run that cannot start or go on (bad resume file, lost worker...)."""


class Stop(Exception):
    """SIGTERM in a worker: launchers send it to every worker when one of them fails."""


def on_sigterm(signum, frame):
    raise Stop("stopped by SIGTERM (the launcher stops every worker when one of them fails)")


def worker_failure(err, rank, distributed, step, last_good):
    """The one-line TrainError a worker stops with, naming the last good checkpoint.

    ``err`` is a ``Stop`` or, in a distributed run, a collective's RuntimeError (a peer
    died); anything else is not a worker failure and gives None, for the caller to re-raise.
    """
    where = f"last good checkpoint: {last_good[0] or 'none'} (step {last_good[1]})"
    if isinstance(err, Stop):
        return TrainError(f"rank {rank}: {err} at step {step}; {where}")
    if not distributed:
        return None
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return TrainError(f"rank {rank}: stopped at step {step}: {first} (a worker died or the launcher "
                      f"stopped the job); {where}")


@dataclass(frozen=True)
class Options:
    """Command-line choices layered over the recipe (None: the recipe's value)."""
    recipe: str
    backend: str = "torch"
    device: str = None
    resume: str = None
    out: str = None
    epochs: int = None
    max_steps: int = None
    subset: int = None
    val_subset: int = None
    ckpt_every: int = None
    seed: int = None
    quiet: bool = False
    # ((dotted recipe key, YAML value), ...) from --set KEY=VALUE
    sets: tuple = ()


def default_out(recipe, backend):
    return Path("runs") / f"{recipe.name}-{backend}"


class RunDir:
    """``last``/``best`` checkpoints, ``metrics.jsonl``/``.csv`` and ``curves.png`` of one run."""

    def __init__(self, path, backend):
        self.path = Path(path)
        self.suffix = CKPT_SUFFIX[backend]

    @property
    def last(self):
        return self.path / f"last{self.suffix}"

    @property
    def best(self):
        return self.path / f"best{self.suffix}"

    @property
    def metrics(self):
        return self.path / "metrics.jsonl"

    def make(self):
        self.path.mkdir(parents=True, exist_ok=True)

    def resume_path(self, resume):
        """The checkpoint to resume from: ``auto`` = last if present, else None; a path must exist."""
        if resume is None:
            return None
        if resume == "auto":
            return self.last if self.last.is_file() else None
        path = Path(resume)
        if not path.is_file():
            raise TrainError(f"--resume {resume}: no such file")
        if path.suffix != self.suffix:
            raise TrainError(f"--resume {resume}: a {self.suffix} checkpoint is needed to resume this backend "
                             f"(convert it with 'sknet convert --with-optimizer')")
        return path

    def read_metrics(self, upto_step=None):
        """Rows of metrics.jsonl, without those after ``upto_step`` (a resume drops what it redoes)."""
        if not self.metrics.is_file():
            return []
        rows = [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
        return [r for r in rows if upto_step is None or r["step"] <= upto_step]

    def write_metrics(self, rows):
        """metrics.jsonl and metrics.csv with ``rows``, each written atomically."""
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        atomic_write(self.metrics, lambda tmp: Path(tmp).write_text(text))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, METRIC_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path / "metrics.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))

    def plot(self, rows, title=""):
        """Loss and top-1/top-5 per epoch as curves.png (matplotlib's Agg: no display needed)."""
        if not rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        ep = [r["epoch"] for r in rows]
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
        ax_loss.plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
        ax_loss.plot(ep, [r["val_loss"] for r in rows], "s-", label="val")
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("loss")
        ax_loss.legend()
        ax_acc.plot(ep, [r["top1"] for r in rows], "o-", label="top-1")
        ax_acc.plot(ep, [r["top5"] for r in rows], "s-", label="top-5")
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("val accuracy (%)")
        ax_acc.legend()
        fig.suptitle(title)
        fig.tight_layout()
        atomic_write(self.path / "curves.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))
        plt.close(fig)


def best_top1(rows):
    return max((r["top1"] for r in rows), default=-1.0)


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


class Progress:
    """One line every few seconds on the main rank: step, loss, lr, images/s, ETA."""

    def __init__(self, total_steps, start_step, global_batch, enabled=True, every_s=10.0, stream=None):
        self.total, self.start, self.batch = total_steps, start_step, global_batch
        self.enabled, self.every = enabled, every_s
        self.stream = stream or sys.stdout
        self.t0 = self.last = time.monotonic()

    def rate(self, step):
        done = step - self.start
        dt = time.monotonic() - self.t0
        return done * self.batch / dt if dt > 0 and done > 0 else 0.0

    def update(self, step, epoch, loss, lr, force=False):
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < self.every):
            return
        self.last = now
        ips = self.rate(step)
        left = (self.total - step) * self.batch / ips if ips > 0 else float("nan")
        print(f"epoch {epoch + 1} step {step}/{self.total} ({100.0 * step / self.total:5.1f}%) "
              f"loss {loss:.4f} lr {lr:.5f} {ips:7.1f} img/s ETA {fmt_s(left)}",
              file=self.stream, flush=True)


def fmt_s(seconds):
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(round(seconds))
    return f"{seconds // 60:d}:{seconds % 60:02d}"


def log(rank, *parts):
    if rank == 0:
        print(*parts, flush=True)


def maybe_fault(rank, step):
    """SIGKILL this process after ``step`` when SKNET_FAULT_KILL says "rank:step" (tests only)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    want_rank, want_step = (int(v) for v in spec.split(":"))
    if rank == want_rank and step == want_step:
        import signal

        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Plan:
    """How many steps, where to start, when to checkpoint: the same arithmetic on every backend."""
    steps_per_epoch: int
    epochs: int
    start_step: int
    stop_step: int
    ckpt_every: int

    @property
    def total_steps(self):
        return self.steps_per_epoch * self.epochs

    def epoch_of(self, step):
        return step // self.steps_per_epoch


def make_plan(recipe, n_train, world_size, start_step, opts):
    from .data import steps_per_epoch

    spe = steps_per_epoch(n_train, world_size, recipe.batch_size, recipe.data.drop_last)
    if spe < 1:
        raise TrainError(f"{n_train} training images over {world_size} workers give no full batch of "
                         f"{recipe.batch_size}: lower batch_size or use more images")
    total = spe * recipe.epochs
    stop = total if opts.max_steps is None else min(total, opts.max_steps)
    # Default: a checkpoint about every 10 % of an epoch, so a kill loses little.
    every = opts.ckpt_every or max(1, spe // 10)
    return Plan(spe, recipe.epochs, start_step, stop, every)


def epoch_row(epoch, step, train_loss, val, lr, images_per_s, epoch_s, wall_s):
    """One metrics row: ``val`` = (loss sum, top1 count, top5 count, n)."""
    loss_sum, c1, c5, n = val
    return {"epoch": epoch, "step": step, "train_loss": round(float(train_loss), 6),
            "val_loss": round(loss_sum / n, 6), "top1": round(100.0 * c1 / n, 4),
            "top5": round(100.0 * c5 / n, 4), "lr": float(lr), "images_per_s": round(images_per_s, 2),
            "epoch_s": round(epoch_s, 2), "wall_s": round(wall_s, 2)}


def load_run(opts):
    """(recipe, spec, train set, val set) for ``opts``: the recipe with the command line's overrides."""
    from .data import build_dataset
    from .recipe import load_recipe

    overrides = {}
    if opts.epochs is not None:
        overrides["epochs"] = opts.epochs
    if opts.seed is not None:
        overrides["seed"] = opts.seed
    overrides.update(dict(opts.sets))
    if opts.epochs is not None and opts.epochs <= 0:
        raise TrainError(f"--epochs must be >= 1, got {opts.epochs}")
    recipe = load_recipe(opts.recipe)
    if overrides:
        # A shorter run keeps the recipe's warm-up only if it still fits.
        if "epochs" in overrides and "schedule.warmup_epochs" not in overrides \
                and recipe.schedule.warmup_epochs >= overrides["epochs"]:
            overrides["schedule.warmup_epochs"] = 0.0
        recipe = recipe.replace(overrides)
    spec = recipe.model_spec()
    train = build_dataset(recipe, spec, "train")
    val = build_dataset(recipe, spec, "val")
    if opts.subset:
        train = train.subset(opts.subset)
    if opts.val_subset:
        val = val.subset(opts.val_subset)
    return recipe, spec, train, val
