"""The module tree a spec describes, without any framework.

``layers(spec)`` walks the spec's block plan (``sknet.plan``) and lists each
parameterised layer (conv, BN, linear) under its path in the module tree, with its
shape and the spatial size it produces at the spec's input size. Parameter names, the
checkpoint layouts, the parameter count, the MACs and the weight initialisation
are all derived from this one list, so a user's own spec gets them for free.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

from .plan import build_plan


@dataclass(frozen=True)
class Conv:
    path: str
    in_ch: int
    out_ch: int
    kernel: int
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    bias: bool = False
    out_hw: Tuple[int, int] = (0, 0)

    @property
    def padding(self):
        return self.dilation * (self.kernel - 1) // 2

    @property
    def weight_shape(self):
        return (self.out_ch, self.in_ch // self.groups, self.kernel, self.kernel)

    @property
    def params(self):
        n = self.out_ch * (self.in_ch // self.groups) * self.kernel * self.kernel
        return n + (self.out_ch if self.bias else 0)

    @property
    def macs(self):
        h, w = self.out_hw
        return h * w * self.out_ch * (self.in_ch // self.groups) * self.kernel * self.kernel


@dataclass(frozen=True)
class Norm:
    path: str
    channels: int

    params = property(lambda self: 2 * self.channels)
    macs = 0


@dataclass(frozen=True)
class Linear:
    path: str
    in_features: int
    out_features: int

    params = property(lambda self: self.in_features * self.out_features + self.out_features)
    macs = property(lambda self: self.in_features * self.out_features)


@dataclass(frozen=True)
class SKUnit:
    """Where an SK unit sits; not a parameterised layer, listed for reports and attention."""
    path: str
    in_ch: int
    out_ch: int
    attn_width: int
    num_branches: int
    out_hw: Tuple[int, int]


def _conv(path, c, hw=None):
    hw = c.out_hw if hw is None else hw
    return Conv(path, c.in_ch, c.out_ch, c.kernel, c.stride, c.dilation, c.groups, False, (hw, hw))


def _conv_bn(path, c):
    return [_conv(f"{path}.conv", c), Norm(f"{path}.bn", c.out_ch)]


def _sk(path, u):
    items = []
    for i, branch in enumerate(u.branches):
        items += _conv_bn(f"{path}.paths.{i}", branch)
    d = u.attn_width
    return items + [SKUnit(path, u.in_ch, u.channels, d, u.num_branches, (u.out_hw, u.out_hw)),
                    Conv(f"{path}.attn.fc_reduce", u.channels, d, 1, out_hw=(1, 1)),
                    Norm(f"{path}.attn.bn", d),
                    Conv(f"{path}.attn.fc_select", d, u.channels * u.num_branches, 1, out_hw=(1, 1))]


def block_layers(b):
    """A block's layers under their module names: basic conv1 (SK), conv2; bottleneck conv1, conv2 (SK), conv3."""
    p, name = b.name, role_names(b)
    items = [] if b.reduce is None else _conv_bn(f"{p}.{name['reduce']}", b.reduce)
    items += _sk(f"{p}.{name['sk']}", b.sk) + _conv_bn(f"{p}.{name['expand']}", b.expand)
    if b.downsample is not None:
        items += [_conv(f"{p}.downsample.0", b.downsample), Norm(f"{p}.downsample.1", b.out_ch)]
    return items


def layers(spec, size: Optional[int] = None):
    """Every conv, BN, linear and SK unit of ``spec`` in build order."""
    plan = build_plan(spec, size)
    (conv_name, _, conv), (bn_name, _, channels) = stem_parts(plan)[:2]
    items = [_conv(conv_name, conv), Norm(bn_name, channels)]
    for block in plan.blocks:
        items += block_layers(block)
    return items + ([Linear("fc", plan.num_features, plan.num_classes)] if plan.num_classes else [])


def param_layers(spec, size=None):
    return [x for x in layers(spec, size) if not isinstance(x, SKUnit)]


def sk_units(spec, size=None):
    return [x for x in layers(spec, size) if isinstance(x, SKUnit)]


def role_names(block):
    """Module names of a block's parts: timm's conv1/conv2(/conv3), whichever holds the SK unit."""
    if block.reduce is None:
        return {"sk": "conv1", "expand": "conv2"}
    return {"reduce": "conv1", "sk": "conv2", "expand": "conv3"}


def stem_parts(plan):
    """[(module name, role, argument)] of the stem in order, under timm's names: the conv
    (a ConvPlan), its BN (channels), the ReLU, the max-pool (a PoolSpec, or None: identity)."""
    conv = plan.stem.conv
    return [("conv1", "conv", conv), ("bn1", "bn", conv.out_ch), ("act1", "relu", None),
            ("maxpool", "pool", plan.stem.pool)]


def block_parts(block):
    """[(module name, role, plan)] of a block's residual branch in order: role "conv" (a
    conv-BN, ReLU after it if ``act``) or "sk"; each backend maps a role to its module."""
    name = role_names(block)
    parts = [] if block.reduce is None else [(name["reduce"], "conv", block.reduce, block.first_relu)]
    return parts + [(name["sk"], "sk", block.sk, True), (name["expand"], "conv", block.expand, False)]


def residual_norms(spec):
    """The last BN of every block's residual branch (before the add), in build order.

    Scaling its weight scales what the block adds to its shortcut (the zero-gamma init of
    Goyal et al. 2017 sets it to 0); ``sknet.params.init_state`` takes that scale.
    """
    return [f"{b.name}.{role_names(b)['expand']}.bn" for b in build_plan(spec).blocks]


def count_params(spec):
    return sum(x.params for x in param_layers(spec))


def count_macs(spec, size=None):
    """Multiply-accumulates of every conv and linear layer, as timm's/fvcore's conv+fc hooks count."""
    return sum(x.macs for x in param_layers(spec, size))
