"""The model spec: an SKNet described as plain data.

A spec is loaded from ``configs/models/<name>.yaml`` (or a user's own file) into the
frozen dataclasses below, then checked for values no network could have. Backends
read nothing but these dataclasses.
"""
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Tuple

from .errors import SpecError
from .plan import build_plan
from .tree import count_params
from .typed import build, load_yaml, to_dict


@dataclass(frozen=True)
class InputSpec:
    size: int = 224
    in_chans: int = 3
    crop_pct: float = 0.875
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bicubic"
    mean: Tuple[float, ...] = (0.485, 0.456, 0.406)
    std: Tuple[float, ...] = (0.229, 0.224, 0.225)
    # The order the network's input channels are in; mean and std are given in that order.
    # "bgr": Caffe models trained on OpenCV-decoded images (the authors' SKNet-50/101).
    channel_order: Literal["rgb", "bgr"] = "rgb"


@dataclass(frozen=True)
class PoolSpec:
    kernel_size: int = 3
    stride: int = 2
    # "symmetric": pad (k-1)//2 on every side, as PyTorch's MaxPool2d(padding=1) and timm.
    # "same": TensorFlow/MindSpore pad_mode="same", extra padding bottom/right only, as mindcv.
    # "caffe": no padding, output size rounded up (Caffe's pooling), so the last window may
    # hang over the bottom/right edge and takes the maximum of the pixels it covers.
    padding: Literal["symmetric", "same", "caffe"] = "symmetric"


@dataclass(frozen=True)
class StemSpec:
    channels: int = 64
    kernel_size: int = 7
    stride: int = 2
    pool: Optional[PoolSpec] = field(default_factory=PoolSpec)


@dataclass(frozen=True)
class BranchSpec:
    kernel_size: int = 3
    dilation: int = 1


@dataclass(frozen=True)
class SKSpec:
    """One selective-kernel unit: M branches, fuse by sum, squeeze to d, select by softmax over M."""
    branches: Tuple[BranchSpec, ...] = (BranchSpec(3, 1), BranchSpec(3, 2))
    split_input: bool = False
    # d = make_divisible(C * rd_ratio, rd_divisor) floored at min_width: the paper's max(C/r, L).
    rd_ratio: float = 1 / 16
    rd_divisor: int = 8
    min_width: Optional[int] = None
    # One attention width per stage, replacing the rule above where given (0: the rule):
    # the authors' SKNet-101 prototxt has d = 16 in its second stage where the rule gives 32.
    attn_widths: Tuple[int, ...] = ()

    @property
    def num_branches(self):
        return len(self.branches)


@dataclass(frozen=True)
class BlockSpec:
    type: Literal["basic", "bottleneck"] = "basic"
    # mindcv's bottleneck leaves out the ReLU after its first 1x1 conv; timm's has it.
    first_relu: bool = True
    # Stochastic depth: the last block's rate; block i of n drops its residual branch with
    # rate * i / (n - 1), as timm schedules it over its ResNets' blocks.
    drop_path_rate: float = 0.0


@dataclass(frozen=True)
class StagesSpec:
    depths: Tuple[int, ...] = (2, 2, 2, 2)
    channels: Tuple[int, ...] = (64, 128, 256, 512)
    strides: Tuple[int, ...] = (1, 2, 2, 2)
    groups: int = 1
    base_width: int = 64


@dataclass(frozen=True)
class DownsampleSpec:
    # A 1x1 conv carrying the stride, then BN, as timm's and mindcv's SK models (no avg-down).
    kind: Literal["conv"] = "conv"


@dataclass(frozen=True)
class NormSpec:
    # PyTorch's convention: running = (1 - momentum) * running + momentum * batch.
    momentum: float = 0.1
    eps: float = 1e-5


@dataclass(frozen=True)
class HeadSpec:
    dropout: float = 0.0
    # "avg": global average pooling before the classifier; "": none, the head passes the
    # maps through (timm allows that only without a classifier: num_classes 0).
    global_pool: Literal["avg", ""] = "avg"


@dataclass(frozen=True)
class FeaturesSpec:
    """A backbone: the model returns the maps of ``out_indices`` instead of logits.

    Feature points are timm's for its ResNets: 0 is the stem's ``act1``, i the output of
    stage ``layer<i>``; negative indices count from the last; None takes every point.
    """
    only: bool = False
    out_indices: Optional[Tuple[int, ...]] = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str = ""
    aliases: Tuple[str, ...] = ()
    num_classes: int = 1000
    input: InputSpec = field(default_factory=InputSpec)
    stem: StemSpec = field(default_factory=StemSpec)
    block: BlockSpec = field(default_factory=BlockSpec)
    stages: StagesSpec = field(default_factory=StagesSpec)
    sk: SKSpec = field(default_factory=SKSpec)
    downsample: DownsampleSpec = field(default_factory=DownsampleSpec)
    norm: NormSpec = field(default_factory=NormSpec)
    head: HeadSpec = field(default_factory=HeadSpec)
    features: FeaturesSpec = field(default_factory=FeaturesSpec)
    source: str = field(default="", compare=False, repr=False)

    def replace(self, **overrides):
        """A copy with ``KEYWORDS`` (timm's names) set; None leaves a field as it is. Validated again."""
        data = to_dict(self)
        data.pop("source")
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in KEYWORDS:
                raise SpecError(self.source, key, f"unknown keyword (known: {', '.join(KEYWORDS)})")
            *parents, leaf = KEYWORDS[key].split(".")
            node = data
            for part in parents:
                node = node[part]
            node[leaf] = list(value) if isinstance(value, (tuple, list)) else value
            if key == "in_chans":
                # Other channel counts take the average statistics on every channel.
                for stat in ("mean", "std"):
                    vals = data["input"][stat]
                    if len(vals) != value:
                        data["input"][stat] = [sum(vals) / len(vals)] * value
        return from_dict(data, self.source)

    def derive(self, **sections):
        """A copy with whole top-level sections replaced, given as their YAML data
        (``stages={...}``, ``sk={...}``): for new architectures, where ``replace`` takes only
        the user-facing keywords. Validated again."""
        data = to_dict(self)
        data.pop("source")
        for key, value in sections.items():
            if key not in data:
                raise SpecError(self.source, key, f"unknown section (known: {', '.join(data)})")
            data[key] = value
        return from_dict(data, self.source)

    def classifier(self):
        """The whole classifier this spec is cut from: features off, average pooling, a head
        (1000 classes where it has none; a checkpoint's own head size replaces that)."""
        data = to_dict(self)
        data.pop("source")
        data["features"] = {"only": False, "out_indices": None}
        data["head"]["global_pool"] = "avg"
        data["num_classes"] = self.num_classes or 1000
        return from_dict(data, self.source)


# create_model's keywords (timm's names) and the spec field each sets: the one list of them.
KEYWORDS = {"num_classes": "num_classes", "in_chans": "input.in_chans", "size": "input.size",
            "drop_rate": "head.dropout", "global_pool": "head.global_pool",
            "drop_path_rate": "block.drop_path_rate", "features_only": "features.only",
            "out_indices": "features.out_indices"}


# Bounds on what a spec may ask for, checked before anything is sized from it: far above
# every published SKNet (ImageNet-21k's 21,841 classes, 2048 widths, depth 36 in a stage),
# far below what would exhaust memory or time while building the plan.
LIMITS = {"num_classes": 100_000, "input.in_chans": 64, "input.size": 4096, "stem.channels": 4096,
          "stem.kernel_size": 15, "stem.stride": 8, "stem.pool.kernel_size": 15, "stem.pool.stride": 8,
          "stages.depths": 256, "stages.count": 16, "stages.channels": 8192, "stages.groups": 1024,
          "stages.base_width": 1024, "sk.branches": 8, "sk.branches.kernel_size": 15,
          "sk.branches.dilation": 16, "sk.rd_divisor": 1024, "sk.min_width": 8192}
# 40x SKNet-101's 48.7M; the whole network's count, from the plan, before any tensor exists.
MAX_PARAMS = 2_000_000_000


def _check(spec):
    src = spec.source

    def need(ok, key, message):
        if not ok:
            raise SpecError(src, key, message)

    def within(key, value, limit_key=None):
        limit = LIMITS[limit_key or key]
        need(value <= limit, key, f"must be at most {limit}, got {value}")

    need(spec.num_classes >= 0, "num_classes", f"must be >= 0 (0: no classifier), got {spec.num_classes}")
    need(spec.head.global_pool or not spec.num_classes, "head.global_pool",
         f"'' (no pooling) needs num_classes 0 (no classifier), got {spec.num_classes}")
    need(0 <= spec.block.drop_path_rate < 1, "block.drop_path_rate",
         f"must be in [0, 1), got {spec.block.drop_path_rate}")
    need(spec.features.only or spec.features.out_indices is None, "features.out_indices",
         "needs features_only (features.only: true)")
    need(spec.input.in_chans >= 1, "input.in_chans", f"must be >= 1, got {spec.input.in_chans}")
    need(spec.input.size >= 8, "input.size", f"must be >= 8, got {spec.input.size}")
    need(len(spec.input.mean) == spec.input.in_chans, "input.mean",
         f"has {len(spec.input.mean)} values for {spec.input.in_chans} input channels")
    need(len(spec.input.std) == spec.input.in_chans, "input.std",
         f"has {len(spec.input.std)} values for {spec.input.in_chans} input channels")
    need(all(s > 0 for s in spec.input.std), "input.std", "must be positive")
    need(0 < spec.input.crop_pct <= 1, "input.crop_pct", f"must be in (0, 1], got {spec.input.crop_pct}")
    stem = spec.stem
    need(stem.channels >= 1, "stem.channels", f"must be >= 1, got {stem.channels}")
    need(stem.kernel_size >= 1 and stem.kernel_size % 2 == 1, "stem.kernel_size",
         f"must be a positive odd number, got {stem.kernel_size}")
    need(stem.stride >= 1, "stem.stride", f"must be >= 1, got {stem.stride}")
    if stem.pool is not None:
        need(stem.pool.kernel_size >= 1, "stem.pool.kernel_size", "must be >= 1")
        need(stem.pool.stride >= 1, "stem.pool.stride", "must be >= 1")
    st = spec.stages
    n = len(st.depths)
    need(n >= 1, "stages.depths", "needs at least one stage")
    need(len(st.channels) == n, "stages.channels", f"has {len(st.channels)} entries for {n} stages")
    need(len(st.strides) == n, "stages.strides", f"has {len(st.strides)} entries for {n} stages")
    for i, d in enumerate(st.depths):
        need(d >= 1, f"stages.depths[{i}]", f"must be >= 1, got {d}")
    for i, c in enumerate(st.channels):
        need(c >= 1, f"stages.channels[{i}]", f"must be >= 1, got {c}")
    for i, s in enumerate(st.strides):
        need(s in (1, 2), f"stages.strides[{i}]", f"must be 1 or 2, got {s}")
    need(st.groups >= 1, "stages.groups", f"must be >= 1, got {st.groups}")
    need(st.base_width >= 1, "stages.base_width", f"must be >= 1, got {st.base_width}")
    if spec.block.type == "basic":
        need(st.groups == 1 and st.base_width == 64, "stages.groups",
             "basic blocks support only groups 1 and base_width 64")
    sk = spec.sk
    m = sk.num_branches
    need(m >= 1, "sk.branches", "needs at least one branch (M >= 1)")
    for i, b in enumerate(sk.branches):
        need(b.kernel_size >= 1 and b.kernel_size % 2 == 1, f"sk.branches[{i}].kernel_size",
             f"must be a positive odd number, got {b.kernel_size}")
        need(b.dilation >= 1, f"sk.branches[{i}].dilation", f"must be >= 1, got {b.dilation}")
    need(0 < sk.rd_ratio <= 1, "sk.rd_ratio", f"must be in (0, 1], got {sk.rd_ratio}")
    need(sk.rd_divisor >= 1, "sk.rd_divisor", f"must be >= 1, got {sk.rd_divisor}")
    need(sk.min_width is None or sk.min_width >= 1, "sk.min_width", "must be >= 1")
    need(not sk.attn_widths or len(sk.attn_widths) == n, "sk.attn_widths",
         f"has {len(sk.attn_widths)} entries for {n} stages")
    for i, w in enumerate(sk.attn_widths):
        need(w >= 0, f"sk.attn_widths[{i}]", f"must be >= 0 (0: by the rule), got {w}")
    need(0 <= spec.norm.momentum <= 1, "norm.momentum", f"must be in [0, 1], got {spec.norm.momentum}")
    need(spec.norm.eps > 0, "norm.eps", f"must be positive, got {spec.norm.eps}")
    need(0 <= spec.head.dropout < 1, "head.dropout", f"must be in [0, 1), got {spec.head.dropout}")
    # Upper bounds before the plan sizes anything from them.
    within("num_classes", spec.num_classes)
    within("input.in_chans", spec.input.in_chans)
    within("input.size", spec.input.size)
    within("stem.channels", spec.stem.channels)
    within("stem.kernel_size", spec.stem.kernel_size)
    within("stem.stride", spec.stem.stride)
    if spec.stem.pool is not None:
        within("stem.pool.kernel_size", spec.stem.pool.kernel_size)
        within("stem.pool.stride", spec.stem.pool.stride)
    within("stages.depths", len(spec.stages.depths), "stages.count")
    for i, d in enumerate(spec.stages.depths):
        within(f"stages.depths[{i}]", d, "stages.depths")
    for i, c in enumerate(spec.stages.channels):
        within(f"stages.channels[{i}]", c, "stages.channels")
    within("stages.groups", spec.stages.groups)
    within("stages.base_width", spec.stages.base_width)
    within("sk.branches", len(spec.sk.branches))
    for i, b in enumerate(spec.sk.branches):
        within(f"sk.branches[{i}].kernel_size", b.kernel_size, "sk.branches.kernel_size")
        within(f"sk.branches[{i}].dilation", b.dilation, "sk.branches.dilation")
    within("sk.rd_divisor", spec.sk.rd_divisor)
    if spec.sk.min_width is not None:
        within("sk.min_width", spec.sk.min_width)
    for i, w in enumerate(spec.sk.attn_widths):
        within(f"sk.attn_widths[{i}]", w, "sk.min_width")
    # Channel arithmetic (widths, groups, the split input) is checked where it is done.
    build_plan(spec)
    # Each value within its bound can still multiply into a network no machine holds.
    params = count_params(spec)
    need(params <= MAX_PARAMS, "stages", f"describes {params:,} parameters, more than the limit of {MAX_PARAMS:,}")


def from_dict(data, source=""):
    spec = build(ModelSpec, data, source)
    spec = dataclasses.replace(spec, source=source)
    _check(spec)
    return spec


def load_spec(path):
    path = Path(path)
    return from_dict(load_yaml(path), str(path))
