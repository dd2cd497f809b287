"""Training recipes: one YAML file that means the same training on every backend.

A recipe is loaded from ``configs/recipes/<name>.yaml`` (or a user's own file) into
the frozen dataclasses below with the same strict builder as the model specs, then
checked for values no training could have. Unknown keys, wrong types and impossible
values raise ``SpecError`` naming the file and the key path. docs/recipes.md says what
every field means on PyTorch and on MindSpore.
"""
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Tuple

from .errors import SKNetError, SpecError
from .spec import LIMITS
from .typed import build, load_yaml, to_dict

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class DataRecipe:
    kind: Literal["fashion_mnist", "imagefolder"] = "imagefolder"
    # Folder of the IDX files or of the <split>/<class>/ tree; relative paths are taken
    # from the working directory. Empty means the Debian package's folder for Fashion-MNIST.
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    # Train crop size and eval resize/crop; null takes the model spec's input section.
    size: Optional[int] = None
    crop_pct: Optional[float] = None
    interpolation: Optional[Literal["bilinear", "bicubic", "nearest"]] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    # Train crop: "random_resized" (Inception-style, scale/ratio), "pad" (pad by
    # ``padding`` then a random size x size crop, CIFAR-style) or "none" (eval resize/crop).
    crop: Literal["random_resized", "pad", "none"] = "random_resized"
    scale: Tuple[float, ...] = (0.08, 1.0)
    ratio: Tuple[float, ...] = (3 / 4, 4 / 3)
    padding: int = 4
    hflip: float = 0.5
    # Brightness, contrast and saturation each drawn from [max(0, 1 - j), 1 + j].
    color_jitter: float = 0.0
    re_prob: float = 0.0
    re_mode: Literal["const", "pixel"] = "const"
    num_workers: int = 2
    # Drop each worker's last partial batch (mindcv's drop_remainder); every worker then
    # runs the same number of steps, which data-parallel training needs.
    drop_last: bool = True


@dataclass(frozen=True)
class OptimizerRecipe:
    name: Literal["sgd"] = "sgd"
    # Peak learning rate at a global batch of ``base_batch``; the schedule scales it by
    # global batch / base_batch (null: no scaling, lr is used as is).
    lr: float = 0.1
    base_batch: Optional[int] = 256
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    # False: decay only conv and linear weights. True: every trainable tensor (BN gamma
    # and beta, biases too), as mindcv's weight_decay_filter "disable".
    decay_norm_and_bias: bool = False


@dataclass(frozen=True)
class ScheduleRecipe:
    kind: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    # Warm-up starts at warmup_factor * peak lr and rises linearly to the peak.
    warmup_factor: float = 0.0
    min_lr: float = 0.0
    # Cosine: length of the decay after warm-up (null: to the last epoch); later steps stay at min_lr.
    decay_epochs: Optional[float] = None
    # Step: lr *= gamma every step_epochs epochs, counted from the start of training.
    step_epochs: int = 30
    gamma: float = 0.1
    # Step, when given: lr *= gamma at each of these epochs instead of every step_epochs
    # (ResNeXt's and SKNet's CIFAR schedule: 150 and 225 of 300).
    milestones: Tuple[int, ...] = ()
    # True: lr changes every optimizer step (mindcv's default); False: once per epoch.
    per_step: bool = True


@dataclass(frozen=True)
class AmpRecipe:
    enabled: bool = False
    dtype: Literal["fp16", "bf16"] = "fp16"
    # MindSpore's AMP level; PyTorch autocast is O1-like whatever is asked here.
    level: Literal["O0", "O1", "O2", "O3"] = "O2"
    # Fixed loss scale (1 = none); PyTorch's fp16 uses a GradScaler with this initial scale.
    loss_scale: float = 1.0
    # Overflowing steps (non-finite gradients, the update skipped) in a row that stop the run.
    max_overflow_steps: int = 10


@dataclass(frozen=True)
class EmaRecipe:
    """An exponential moving average of the weights and BN statistics (docs/recipes.md)."""
    enabled: bool = False
    decay: float = 0.9999
    # Decay at update t: "none" the constant decay; "timm" ModelEmaV3's use_warmup,
    # min(decay, 1 - (1 + t / warmup_gamma) ** -warmup_power) with t = updates - 1;
    # "mindcv" its TrainStep's decay * (1 - exp(-t / warmup_steps)) with t = updates.
    warmup: Literal["none", "timm", "mindcv"] = "none"
    warmup_power: float = 2 / 3
    warmup_gamma: float = 1.0
    warmup_steps: float = 2000.0


@dataclass(frozen=True)
class GradRecipe:
    # Micro-batches of batch_size summed per optimizer step: the global batch is
    # world size x batch_size x accumulation, and the lr scales with it.
    accumulation: int = 1
    # Clip the (worker-averaged, accumulated) gradients to this global L2 norm; null: no clipping.
    clip_norm: Optional[float] = None


@dataclass(frozen=True)
class Recipe:
    model: str
    description: str = ""
    num_classes: Optional[int] = None
    data: DataRecipe = field(default_factory=DataRecipe)
    batch_size: int = 64          # per worker; the global batch is batch_size x world size
    eval_batch_size: Optional[int] = None
    epochs: int = 1
    optimizer: OptimizerRecipe = field(default_factory=OptimizerRecipe)
    schedule: ScheduleRecipe = field(default_factory=ScheduleRecipe)
    label_smoothing: float = 0.0
    amp: AmpRecipe = field(default_factory=AmpRecipe)
    grad: GradRecipe = field(default_factory=GradRecipe)
    ema: EmaRecipe = field(default_factory=EmaRecipe)
    # BN statistics over the global batch (torch.nn.SyncBatchNorm / mindspore.nn.SyncBatchNorm)
    # instead of per worker with the running statistics averaged at checkpoints.
    sync_bn: bool = False
    seed: int = 0
    device: Literal["auto", "cpu", "gpu", "cuda", "ascend"] = "auto"
    name: str = field(default="", compare=False)
    source: str = field(default="", compare=False, repr=False)

    def model_spec(self):
        """The model spec this recipe trains (``num_classes`` and data channels applied)."""
        from .registry import get_spec

        return get_spec(self.model, num_classes=self.num_classes)

    def replace(self, overrides):
        """A copy with dotted keys replaced (``{"epochs": 2, "data.root": "x"}``); validated again."""
        data = to_dict(self)
        for key in ("name", "source"):
            data.pop(key)
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise SpecError(self.source, dotted, "unknown override")
                node = node[part]
            if leaf not in node:
                raise SpecError(self.source, dotted, "unknown override")
            node[leaf] = value
        return from_dict(data, self.source, self.name)


MAX_EPOCHS = 10_000
MAX_BATCH = 65_536


def _check(recipe):
    src = recipe.source

    def need(ok, key, message):
        if not ok:
            raise SpecError(src, key, message)

    from .registry import get_spec

    try:
        spec = get_spec(recipe.model)
    except SpecError as err:
        raise SpecError(src, "model", str(err)) from None
    need(recipe.num_classes is None or recipe.num_classes >= 1, "num_classes",
         f"must be >= 1, got {recipe.num_classes}")
    need(recipe.batch_size >= 1, "batch_size", f"must be >= 1, got {recipe.batch_size}")
    need(recipe.eval_batch_size is None or recipe.eval_batch_size >= 1, "eval_batch_size",
         f"must be >= 1, got {recipe.eval_batch_size}")
    need(recipe.epochs >= 1, "epochs", f"must be >= 1, got {recipe.epochs}")
    # Bounds before anything is sized from them (the lr table has one entry per step).
    need(recipe.epochs <= MAX_EPOCHS, "epochs", f"must be at most {MAX_EPOCHS}, got {recipe.epochs}")
    need(recipe.batch_size <= MAX_BATCH, "batch_size", f"must be at most {MAX_BATCH}, got {recipe.batch_size}")
    need(recipe.eval_batch_size is None or recipe.eval_batch_size <= MAX_BATCH, "eval_batch_size",
         f"must be at most {MAX_BATCH}, got {recipe.eval_batch_size}")
    # NumPy's and MindSpore's seeds are unsigned 32-bit.
    need(recipe.seed < 2 ** 32, "seed", f"must be below 2**32, got {recipe.seed}")
    need(0 <= recipe.label_smoothing < 1, "label_smoothing",
         f"must be in [0, 1), got {recipe.label_smoothing}")
    need(recipe.seed >= 0, "seed", f"must be >= 0, got {recipe.seed}")

    d = recipe.data
    need(d.size is None or d.size >= 8, "data.size", f"must be >= 8, got {d.size}")
    need(d.size is None or d.size <= LIMITS["input.size"], "data.size",
         f"must be at most {LIMITS['input.size']}, got {d.size}")
    need(d.crop_pct is None or 0 < d.crop_pct <= 1, "data.crop_pct", f"must be in (0, 1], got {d.crop_pct}")
    chans = spec.input.in_chans
    for stat in ("mean", "std"):
        vals = getattr(d, stat)
        need(vals is None or len(vals) == chans, f"data.{stat}",
             f"has {len(vals or ())} values for the {chans} input channels of '{spec.name}'")
    need(d.std is None or all(s > 0 for s in d.std), "data.std", "must be positive")
    need(len(d.scale) == 2 and 0 < d.scale[0] <= d.scale[1] <= 1, "data.scale",
         f"must be [min, max] with 0 < min <= max <= 1, got {list(d.scale)}")
    need(len(d.ratio) == 2 and 0 < d.ratio[0] <= d.ratio[1], "data.ratio",
         f"must be [min, max] with 0 < min <= max, got {list(d.ratio)}")
    need(d.padding >= 0, "data.padding", f"must be >= 0, got {d.padding}")
    need(0 <= d.hflip <= 1, "data.hflip", f"must be a probability in [0, 1], got {d.hflip}")
    need(0 <= d.color_jitter <= 1, "data.color_jitter", f"must be in [0, 1], got {d.color_jitter}")
    need(0 <= d.re_prob <= 1, "data.re_prob", f"must be a probability in [0, 1], got {d.re_prob}")
    need(d.num_workers >= 0, "data.num_workers", f"must be >= 0, got {d.num_workers}")
    need(d.train_split != "" and d.val_split != "", "data.train_split", "split names must not be empty")

    o = recipe.optimizer
    need(o.lr > 0, "optimizer.lr", f"must be positive, got {o.lr}")
    need(o.base_batch is None or o.base_batch >= 1, "optimizer.base_batch", f"must be >= 1, got {o.base_batch}")
    need(0 <= o.momentum < 1, "optimizer.momentum", f"must be in [0, 1), got {o.momentum}")
    need(not o.nesterov or o.momentum > 0, "optimizer.nesterov", "needs a momentum > 0")
    need(o.weight_decay >= 0, "optimizer.weight_decay", f"must be >= 0, got {o.weight_decay}")

    s = recipe.schedule
    need(0 <= s.warmup_epochs < recipe.epochs, "schedule.warmup_epochs",
         f"must be in [0, epochs={recipe.epochs}), got {s.warmup_epochs}")
    need(0 <= s.warmup_factor <= 1, "schedule.warmup_factor", f"must be in [0, 1], got {s.warmup_factor}")
    need(0 <= s.min_lr <= o.lr, "schedule.min_lr", f"must be in [0, optimizer.lr={o.lr}], got {s.min_lr}")
    need(s.decay_epochs is None or s.decay_epochs > 0, "schedule.decay_epochs",
         f"must be positive, got {s.decay_epochs}")
    need(s.step_epochs >= 1, "schedule.step_epochs", f"must be >= 1, got {s.step_epochs}")
    need(0 < s.gamma <= 1, "schedule.gamma", f"must be in (0, 1], got {s.gamma}")
    need(all(m >= 1 for m in s.milestones) and list(s.milestones) == sorted(set(s.milestones)),
         "schedule.milestones", f"must be increasing epochs >= 1, got {list(s.milestones)}")

    a = recipe.amp
    need(a.loss_scale >= 1, "amp.loss_scale", f"must be >= 1, got {a.loss_scale}")
    need(a.max_overflow_steps >= 1, "amp.max_overflow_steps", f"must be >= 1, got {a.max_overflow_steps}")

    g = recipe.grad
    need(1 <= g.accumulation <= 1024, "grad.accumulation", f"must be in [1, 1024], got {g.accumulation}")
    need(g.clip_norm is None or g.clip_norm > 0, "grad.clip_norm", f"must be positive, got {g.clip_norm}")

    e = recipe.ema
    need(0 <= e.decay < 1, "ema.decay", f"must be in [0, 1), got {e.decay}")
    need(e.warmup_power > 0, "ema.warmup_power", f"must be positive, got {e.warmup_power}")
    need(e.warmup_gamma > 0, "ema.warmup_gamma", f"must be positive, got {e.warmup_gamma}")
    need(e.warmup_steps > 0, "ema.warmup_steps", f"must be positive, got {e.warmup_steps}")


def from_dict(data, source="", name=""):
    recipe = build(Recipe, data, source)
    recipe = dataclasses.replace(recipe, source=source, name=name or Path(source).stem)
    _check(recipe)
    return recipe


def recipe_path(name_or_path):
    """The file of a recipe given by name (``configs/recipes/<name>.yaml``) or by path."""
    from .registry import RECIPE_DIR

    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        return Path(text)
    path = RECIPE_DIR / f"{text}.yaml"
    if not path.exists():
        known = ", ".join(list_recipes()) or "none"
        raise SpecError("", "", f"unknown recipe '{text}' (known: {known})")
    return path


def list_recipes():
    from .registry import RECIPE_DIR

    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path, overrides=None):
    """A validated ``Recipe`` by name or path; ``overrides`` maps dotted keys to new values."""
    path = recipe_path(name_or_path)
    recipe = from_dict(load_yaml(path), str(path), path.stem)
    return recipe.replace(overrides) if overrides else recipe


def data_root(recipe):
    """The dataset folder the recipe reads (Debian's Fashion-MNIST folder when left empty)."""
    root = recipe.data.root
    if not root and recipe.data.kind == "fashion_mnist":
        root = os.environ.get("SKNET_FASHION_MNIST", FASHION_MNIST_ROOT)
    return Path(root)


def global_batch(recipe, world_size):
    """Images per optimizer step over all workers: workers x batch x accumulation."""
    return recipe.batch_size * world_size * recipe.grad.accumulation


def backend_device(device, backend):
    """A recipe's or command line's device as the framework names it; ``auto`` gives None (caller picks)."""
    name = str(device).lower()
    if name == "auto":
        return None
    names = {"torch": {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda"},
             "mindspore": {"cpu": "CPU", "gpu": "GPU", "cuda": "GPU", "ascend": "Ascend"}}.get(backend, {})
    if name not in names:
        raise SKNetError(f"device '{device}' is not available with backend '{backend}' "
                         f"(choose from: auto, {', '.join(names)})")
    return names[name]
