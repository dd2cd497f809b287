"""The block plan: every number of an SKNet, derived once from its spec, without a framework.

``build_plan(spec)`` turns the spec's few hyper-parameters (depths, widths, groups, the SK
unit's branches and reduction) into the network it describes: the stem, and every block
with its channel counts, its SK unit's branch convs and attention width, its shortcut and
the map sizes at the spec's input size. The rules that turn one into the other (ResNeXt's
width, groups capped at the width, the split input, d = max(C/r, L)) live here and only
here: the spec's checks, ``sknet.tree`` (names, counts, MACs, initialisation) and every
backend read the plan, and none of them recomputes a channel count.
"""
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Optional, Tuple

from .errors import SpecError


@dataclass(frozen=True)
class ConvPlan:
    """A bias-free conv with symmetric padding ``dilation * (kernel - 1) / 2``."""
    in_ch: int
    out_ch: int
    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    out_hw: int = 0

    @property
    def padding(self):
        return self.dilation * (self.kernel - 1) // 2


@dataclass(frozen=True)
class SKPlan:
    """One selective-kernel unit: M branch convs (each followed by BN and ReLU) fused by sum,
    pooled, reduced to ``attn_width`` (BN, ReLU) and expanded to M x ``channels`` selection
    logits, softmax over the M branches per channel."""
    in_ch: int
    channels: int
    split_input: bool
    branches: Tuple[ConvPlan, ...]
    attn_width: int

    @property
    def num_branches(self):
        return len(self.branches)

    @property
    def branch_in(self):
        return self.branches[0].in_ch

    @property
    def out_hw(self):
        return self.branches[0].out_hw


@dataclass(frozen=True)
class BlockPlan:
    """A residual block. Basic: SK unit (carrying the stride), then a 3x3 conv. Bottleneck:
    1x1 ``reduce`` conv (ReLU unless ``first_relu`` is off), the SK unit, a 1x1 ``expand``.
    ``expand``'s BN is the residual branch's last; its ReLU comes after the shortcut's add."""
    name: str
    type: str
    in_ch: int
    width: int
    out_ch: int
    stride: int
    reduce: Optional[ConvPlan]
    first_relu: bool
    sk: SKPlan
    expand: ConvPlan
    downsample: Optional[ConvPlan]
    in_hw: int
    out_hw: int
    # Stochastic depth: the probability that a training pass drops this block's residual branch.
    drop_path: float = 0.0


@dataclass(frozen=True)
class FeaturePlan:
    """A point a backbone can return a map from: timm's ``feature_info`` entry for it."""
    module: str
    channels: int
    reduction: int
    hw: int


@dataclass(frozen=True)
class StagePlan:
    name: str
    blocks: Tuple[BlockPlan, ...]


@dataclass(frozen=True)
class StemPlan:
    conv: ConvPlan
    pool: object  # sknet.spec.PoolSpec or None
    out_hw: int


@dataclass(frozen=True)
class NetPlan:
    in_chans: int
    size: int
    stem: StemPlan
    stages: Tuple[StagePlan, ...]
    num_features: int
    num_classes: int        # 0: no classifier (num_classes 0, or a backbone)
    dropout: float
    global_pool: str        # "avg", or "": the head passes the maps through
    features: Tuple[FeaturePlan, ...]     # every feature point of the whole network
    out_indices: Optional[Tuple[int, ...]] = None  # a backbone's points, ascending; None: a classifier

    @property
    def blocks(self):
        return tuple(b for stage in self.stages for b in stage.blocks)


def make_divisible(value, divisor, min_value):
    """Nearest multiple of ``divisor``, at least ``min_value``, never more than 10 % below ``value``."""
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def attn_width(sk, channels):
    """The paper's d = max(C/r, L): ``channels * rd_ratio`` rounded to ``rd_divisor``, floored
    at ``min_width`` (or the divisor)."""
    floor = sk.min_width if sk.min_width is not None else sk.rd_divisor
    return make_divisible(channels * sk.rd_ratio, sk.rd_divisor, floor)


def conv_out(size, kernel, stride, padding, dilation=1):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pool_out(size, pool):
    if pool.padding == "same":
        return -(-size // pool.stride)
    if pool.padding == "caffe":
        return -(-max(size - pool.kernel_size, 0) // pool.stride) + 1
    return conv_out(size, pool.kernel_size, pool.stride, (pool.kernel_size - 1) // 2)


def same_pads(n: int, kernel: int, stride: int) -> Tuple[int, int]:
    """(before, after) padding of TensorFlow's / MindSpore's "same" pooling of ``n`` pixels:
    the odd extra row or column goes after. Plain integer arithmetic, so that a traced or
    scripted module can call it on a shape."""
    total = ((n + stride - 1) // stride - 1) * stride + kernel - n
    if kernel < stride:  # never negative otherwise; max() would stop torch.fx on a traced size
        total = max(total, 0)
    return total // 2, total - total // 2


def ceil_pads(n: int, kernel: int, stride: int) -> Tuple[int, int]:
    """(before, after) padding that Caffe's rounded-up pooling of ``n`` pixels amounts to:
    none before; after, what the last window hangs over the edge (padded with -inf)."""
    out = (max(n - kernel, 0) + stride - 1) // stride + 1
    return 0, (out - 1) * stride + kernel - n


def pool_pads(pool, height, width):
    """(top, bottom, left, right) padding of the stem's max-pool on a height x width map."""
    if pool.padding == "same":
        return same_pads(height, pool.kernel_size, pool.stride) + same_pads(width, pool.kernel_size, pool.stride)
    if pool.padding == "caffe":
        return ceil_pads(height, pool.kernel_size, pool.stride) + ceil_pads(width, pool.kernel_size, pool.stride)
    p = (pool.kernel_size - 1) // 2
    return (p, p, p, p)


def _conv(in_ch, out_ch, hw, kernel=1, stride=1, dilation=1, groups=1):
    pad = dilation * (kernel - 1) // 2
    return ConvPlan(in_ch, out_ch, kernel, stride, dilation, groups, conv_out(hw, kernel, stride, pad, dilation))


def _sk_unit(spec, stage, in_ch, channels, stride, hw):
    sk = spec.sk
    width = sk.attn_widths[stage] if sk.attn_widths and sk.attn_widths[stage] else attn_width(sk, channels)
    m = len(sk.branches)
    groups = min(channels, spec.stages.groups)
    if sk.split_input and in_ch % m:
        raise SpecError(spec.source, f"stages.channels[{stage}]",
                        f"SK input of {in_ch} channels cannot be split across {m} branches")
    branch_in = in_ch // m if sk.split_input else in_ch
    if branch_in % groups or channels % groups:
        raise SpecError(spec.source, "stages.groups",
                        f"stage {stage}: {branch_in} -> {channels} channels are not divisible by {groups} groups")
    branches = tuple(_conv(branch_in, channels, hw, b.kernel_size, stride, b.dilation, groups) for b in sk.branches)
    return SKPlan(in_ch, channels, sk.split_input, branches, width)


def _block(spec, stage, name, in_ch, planes, stride, hw):
    bottleneck = spec.block.type == "bottleneck"
    expansion = 4 if bottleneck else 1
    out_ch = planes * expansion
    # ResNeXt's width: groups x (base width per group, scaled with the stage's planes).
    width = int(planes * (spec.stages.base_width / 64.0)) * spec.stages.groups if bottleneck else planes
    if width < 1:
        raise SpecError(spec.source, f"stages.channels[{stage}]", "gives a block width of 0")
    reduce = _conv(in_ch, width, hw) if bottleneck else None
    sk = _sk_unit(spec, stage, width if bottleneck else in_ch, width, stride, hw)
    expand = _conv(width, out_ch, sk.out_hw, 1 if bottleneck else 3)
    downsample = _conv(in_ch, out_ch, hw, 1, stride) if stride != 1 or in_ch != out_ch else None
    return BlockPlan(name, spec.block.type, in_ch, width, out_ch, stride, reduce, spec.block.first_relu,
                     sk, expand, downsample, hw, expand.out_hw)


def build_plan(spec, size=None):
    """The ``NetPlan`` of ``spec`` at input size ``size`` (default: the spec's own)."""
    return _plan(spec, size or spec.input.size)


def _out_indices(spec, points):
    """The backbone's feature indices, absolute and ascending; one line naming the bad one."""
    n = len(points)
    asked = spec.features.out_indices
    if asked is None:
        return tuple(range(n))
    if not asked:
        raise SpecError(spec.source, "features.out_indices", "needs at least one index")
    for i in asked:
        if not -n <= i < n:
            names = ", ".join(f"{k} {p.module}" for k, p in enumerate(points))
            raise SpecError(spec.source, "features.out_indices",
                            f"index {i} is out of range: {n} feature maps ({names}), indices {-n} to {n - 1}")
    return tuple(sorted({i % n for i in asked}))


@lru_cache(maxsize=64)
def _plan(spec, size):
    stem = spec.stem
    conv = _conv(spec.input.in_chans, stem.channels, size, stem.kernel_size, stem.stride)
    hw = stem_hw = conv.out_hw if stem.pool is None else pool_out(conv.out_hw, stem.pool)
    points = [FeaturePlan("act1", stem.channels, stem.stride, conv.out_hw)]
    reduction = stem.stride * (1 if stem.pool is None else stem.pool.stride)
    # timm's linear rule: block k of the n in the network drops with rate * k / (n - 1).
    total, k = sum(spec.stages.depths), 0
    rate = spec.block.drop_path_rate
    stages, in_ch = [], stem.channels
    for s, (depth, planes, stride) in enumerate(zip(spec.stages.depths, spec.stages.channels, spec.stages.strides)):
        blocks = []
        for b in range(depth):
            block = _block(spec, s, f"layer{s + 1}.{b}", in_ch, planes, stride if b == 0 else 1, hw)
            blocks.append(replace(block, drop_path=rate * k / max(total - 1, 1)))
            in_ch, hw, k = block.out_ch, block.out_hw, k + 1
        reduction *= stride
        stages.append(StagePlan(f"layer{s + 1}", tuple(blocks)))
        points.append(FeaturePlan(f"layer{s + 1}", in_ch, reduction, hw))
    num_classes, out_indices = spec.num_classes, None
    if spec.features.only:
        # A backbone holds what its last feature point needs: no head, no later stages.
        out_indices = _out_indices(spec, points)
        stages, num_classes = stages[:out_indices[-1]], 0
    return NetPlan(spec.input.in_chans, size, StemPlan(conv, stem.pool, stem_hw), tuple(stages), in_ch,
                   num_classes, spec.head.dropout, spec.head.global_pool, tuple(points), out_indices)
