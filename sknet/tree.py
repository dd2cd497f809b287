"""The module tree a spec describes, without any framework.

``layers(spec)`` walks a spec the way every backend builds it and lists each
parameterised layer (conv, BN, linear) under its path in the tree, with its shape
and the spatial size it produces at the spec's input size. Parameter names, the
checkpoint layouts, the parameter count, the MACs and the weight initialisation
are all derived from this one list, so a user's own spec gets them for free.
"""
from dataclasses import dataclass
from typing import Optional, Tuple


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


def conv_out(size, kernel, stride, padding, dilation=1):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pool_out(size, pool):
    if pool.padding == "same":
        return -(-size // pool.stride)
    return conv_out(size, pool.kernel_size, pool.stride, (pool.kernel_size - 1) // 2)


def pool_pads(pool, height, width):
    """(top, bottom, left, right) padding of the stem's max-pool on a height x width map."""
    k, s = pool.kernel_size, pool.stride
    if pool.padding == "same":
        # TensorFlow's / MindSpore's "same": the odd extra row and column go bottom/right.
        out = []
        for n in (height, width):
            total = max((pool_out(n, pool) - 1) * s + k - n, 0)
            out += [total // 2, total - total // 2]
        return tuple(out)
    p = (k - 1) // 2
    return (p, p, p, p)


class _Walker:
    def __init__(self, spec, size=None):
        self.spec = spec
        self.hw = size or spec.input.size
        self.items = []

    def conv(self, path, cin, cout, k, stride=1, dilation=1, groups=1):
        pad = dilation * (k - 1) // 2
        out = conv_out(self.hw, k, stride, pad, dilation)
        self.items.append(Conv(path, cin, cout, k, stride, dilation, groups, False, (out, out)))
        return out

    def conv_bn(self, path, cin, cout, k, stride=1, dilation=1, groups=1):
        out = self.conv(f"{path}.conv", cin, cout, k, stride, dilation, groups)
        self.items.append(Norm(f"{path}.bn", cout))
        return out

    def sk(self, path, cin, cout, stride):
        sk, spec = self.spec.sk, self.spec
        m = sk.num_branches
        groups = min(cout, spec.stages.groups)
        branch_in = cin // m if sk.split_input else cin
        d = sk.attn_width(cout)
        out = None
        for i, b in enumerate(sk.branches):
            out = self.conv_bn(f"{path}.paths.{i}", branch_in, cout, b.kernel_size, stride, b.dilation, groups)
        self.items.append(SKUnit(path, cin, cout, d, m, (out, out)))
        self.items.append(Conv(f"{path}.attn.fc_reduce", cout, d, 1, out_hw=(1, 1)))
        self.items.append(Norm(f"{path}.attn.bn", d))
        self.items.append(Conv(f"{path}.attn.fc_select", d, cout * m, 1, out_hw=(1, 1)))
        return out

    def block(self, path, inplanes, planes, stride):
        spec, hw_in = self.spec, self.hw
        width = spec.block_width(planes)
        out_ch = planes * spec.expansion
        if spec.block.type == "basic":
            self.hw = self.sk(f"{path}.conv1", inplanes, width, stride)
            self.hw = self.conv_bn(f"{path}.conv2", width, out_ch, 3)
        else:
            self.hw = self.conv_bn(f"{path}.conv1", inplanes, width, 1)
            self.hw = self.sk(f"{path}.conv2", width, width, stride)
            self.hw = self.conv_bn(f"{path}.conv3", width, out_ch, 1)
        if stride != 1 or inplanes != out_ch:
            keep, self.hw = self.hw, hw_in
            self.conv(f"{path}.downsample.0", inplanes, out_ch, 1, stride)
            self.items.append(Norm(f"{path}.downsample.1", out_ch))
            self.hw = keep
        return out_ch

    def walk(self):
        spec = self.spec
        stem = spec.stem
        self.hw = self.conv("conv1", spec.input.in_chans, stem.channels, stem.kernel_size, stem.stride)
        self.items.append(Norm("bn1", stem.channels))
        if stem.pool is not None:
            self.hw = pool_out(self.hw, stem.pool)
        inplanes = stem.channels
        for s, (depth, planes, stride) in enumerate(
                zip(spec.stages.depths, spec.stages.channels, spec.stages.strides)):
            for b in range(depth):
                inplanes = self.block(f"layer{s + 1}.{b}", inplanes, planes, stride if b == 0 else 1)
        self.items.append(Linear("fc", spec.num_features, spec.num_classes))
        return self.items


def layers(spec, size: Optional[int] = None):
    """Every conv, BN, linear and SK unit of ``spec`` in build order."""
    return _Walker(spec, size).walk()


def param_layers(spec, size=None):
    return [x for x in layers(spec, size) if not isinstance(x, SKUnit)]


def sk_units(spec, size=None):
    return [x for x in layers(spec, size) if isinstance(x, SKUnit)]


def residual_norms(spec):
    """The last BN of every block's residual branch (before the add), in build order.

    Scaling its weight scales what the block adds to its shortcut (the zero-gamma init of
    Goyal et al. 2017 sets it to 0); ``sknet.params.init_state`` takes that scale.
    """
    last = {}
    for x in layers(spec):
        parts = x.path.split(".")
        if isinstance(x, Norm) and parts[0].startswith("layer") and parts[2] != "downsample" and "attn" not in parts:
            last[".".join(parts[:2])] = x.path
    return list(last.values())


def stage_of(path):
    """'layer2.3.conv1' -> 'layer2'; the stem and head map to themselves."""
    return path.split(".")[0]


def count_params(spec):
    return sum(x.params for x in param_layers(spec))


def count_macs(spec, size=None):
    """Multiply-accumulates of every conv and linear layer, as timm's/fvcore's conv+fc hooks count."""
    return sum(x.macs for x in param_layers(spec, size))
