"""Reusable PyTorch layers of an SKNet: conv-BN-act, the SK unit, the residual blocks.

Two ways through every layer compute the same function (see docs/performance.md):
- the plain one, module by module, used for training and whenever autograd is recording;
- an inference one (eval mode under ``torch.no_grad``/``inference_mode``) that folds each BN
  into the conv before it and, on CPU in fp32, runs conv + bias + ReLU (+ residual add) as
  one oneDNN call with prepacked weights. ``plain_math()`` switches the latter off.
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from sknet.plan import pool_pads

# Inference fast paths on/off (parity tests and the benchmark compare both ways).
FAST = True


@contextmanager
def plain_math():
    """Run the module-by-module math only: no BN folding, fusion, gate rewrite or NHWC."""
    global FAST
    old, FAST = FAST, False
    try:
        yield
    finally:
        FAST = old


def batch_norm(channels, norm):
    return nn.BatchNorm2d(channels, eps=norm.eps, momentum=norm.momentum)


def _mkldnn_op():
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


_POINTWISE = _mkldnn_op() if torch.backends.mkldnn.is_available() else None


def inferring(module, x):
    """True where the folded inference path may replace the module-by-module one."""
    return (FAST and not module.training and not torch.is_grad_enabled()
            and x.dtype in (torch.float32, torch.float64))


def _key(*tensors):
    try:
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
    except RuntimeError:  # inference tensors have no version counter: never cache them
        return None


class _Folded:
    """BN folded into the preceding conv's weight and bias, and oneDNN's prepacked weight.

    Cached on the conv and keyed by the data pointer and version counter of every tensor
    it was computed from: an optimizer step, ``load_state_dict``, ``.to()`` or a BN statistic
    update bumps one of them, so the next inference call refolds.
    """

    __slots__ = ("key", "weight", "bias", "packed")

    def __init__(self, key, weight, bias):
        self.key, self.weight, self.bias, self.packed = key, weight, bias, {}


def folded(conv, bn):
    """(weight, bias) with ``bn``'s eval-mode affine map folded into ``conv`` (cached)."""
    tensors = (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    key = _key(*tensors)
    cache = conv.__dict__.get("_folded")
    if cache is not None and key is not None and cache.key == key:
        return cache
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    cache = _Folded(key, weight, bias)
    if key is not None:
        conv.__dict__["_folded"] = cache
    return cache


def drop_folded(module):
    for m in module.modules():
        m.__dict__.pop("_folded", None)


def conv_bn_infer(x, conv, bn, relu, residual=None):
    """Eval-mode ``relu?(bn(conv(x)) + residual?)`` with the BN folded into the conv."""
    f = folded(conv, bn)
    # oneDNN's fused op is outside autocast's op list: under CPU autocast F.conv2d runs instead.
    if (_POINTWISE is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")):
        args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        shape = tuple(x.shape)
        w = f.packed.get(shape)
        if w is None:
            # oneDNN's blocked weight layout, computed once per input shape rather than per call.
            w = torch.ops.mkldnn._reorder_convolution_weight(f.weight, *args, list(shape))
            f.packed[shape] = w
        if residual is None:
            return _POINTWISE(x, w, f.bias, *args, "relu" if relu else "none", [], "")
        return _POINTWISE.binary(x, residual, w, f.bias, *args, "add", None,
                                 "relu" if relu else None, [], None)
    y = F.conv2d(x, f.weight, f.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if residual is not None:
        y += residual
    return F.relu_(y) if relu else y


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs a stride-d, dilation-d conv as a dense conv of every d-th pixel.

    With stride = dilation = d and padding d*(k-1)/2, every tap lands on a multiple of d:
    the conv is a stride-1, undilated one over ``x[..., ::d, ::d]`` with padding (k-1)/2.
    Same weights, same products; oneDNN's backward of the strided dilated form ran 1.2-1.9x
    slower than the dense one (the dilated branch of every stride-2 SK unit).
    CPU only: that is where it was measured.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        k, d = self.kernel_size, self.dilation
        self.subsample = (d[0] > 1 and self.stride == d and all(n % 2 for n in k)
                          and self.padding == tuple(di * (ki - 1) // 2 for di, ki in zip(d, k))
                          and self.padding_mode == "zeros")

    def _conv_forward(self, x, weight, bias):
        if FAST and self.subsample and x.device.type == "cpu":
            (dh, dw), (kh, kw) = self.dilation, self.kernel_size
            return F.conv2d(x[:, :, ::dh, ::dw], weight, bias, 1, ((kh - 1) // 2, (kw - 1) // 2), 1,
                            self.groups)
        return super()._conv_forward(x, weight, bias)


class ConvBnAct(nn.Module):
    def __init__(self, cin, cout, kernel, norm, stride=1, dilation=1, groups=1, act=True):
        super().__init__()
        self.conv = Conv2d(cin, cout, kernel, stride, dilation * (kernel - 1) // 2, dilation,
                           groups, bias=False)
        self.bn = batch_norm(cout, norm)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x, residual=None, residual_act=F.relu_):
        """``act(bn(conv(x)))``; with ``residual``, ``residual_act(bn(conv(x)) + residual)`` (act off).

        The blocks pass their own in-place ReLU module as ``residual_act``, so that hooks on
        it (the parity checks record and replay its signs) see the fast path as the plain one.
        """
        if inferring(self, x):
            return conv_bn_infer(x, self.conv, self.bn, residual is not None or self.has_act,
                                 residual)
        y = self.act(self.bn(self.conv(x)))
        if residual is not None:
            y += residual  # BN's backward needs its input, not its output: safe in place
            y = residual_act(y)
        return y

    @property
    def has_act(self):
        return isinstance(self.act, nn.ReLU)


class SelectiveKernelAttn(nn.Module):
    """Fuse (global pool of the branch sum, reduce to d with BN-ReLU) and select (softmax over M)."""

    def __init__(self, channels, attn_width, num_branches, norm):
        super().__init__()
        self.num_branches = num_branches
        self.fc_reduce = nn.Conv2d(channels, attn_width, 1, bias=False)
        self.bn = batch_norm(attn_width, norm)
        self.act = nn.ReLU(inplace=True)
        self.fc_select = nn.Conv2d(attn_width, channels * num_branches, 1, bias=False)

    def logits(self, pooled):
        """(B, M, C, 1, 1) selection logits from the pooled branch sum (B, C, 1, 1)."""
        if inferring(self, pooled):
            z = conv_bn_infer(pooled, self.fc_reduce, self.bn, True)
        else:
            z = self.act(self.bn(self.fc_reduce(pooled)))
        logits = self.fc_select(z)
        # fc_select's channels [i*C, (i+1)*C) score branch i, as in timm and mindcv.
        return logits.view(logits.shape[0], self.num_branches, -1, 1, 1)

    def forward(self, fused):
        return torch.softmax(self.logits(fused.mean((2, 3), keepdim=True)), dim=1)


class SelectiveKernel(nn.Module):
    """The SK unit: M conv branches of different dilation, fused and selected per channel.

    Set ``record = True`` to keep the last selection weights (B, M, C, 1, 1) and branch
    outputs in ``recorded``, for attention analysis; the output is unchanged.
    """

    def __init__(self, cin, cout, sk, norm, stride=1, groups=1):
        super().__init__()
        self.split_input = sk.split_input
        self.num_branches = sk.num_branches
        groups = min(cout, groups)
        branch_in = cin // self.num_branches if sk.split_input else cin
        self.paths = nn.ModuleList(
            ConvBnAct(branch_in, cout, b.kernel_size, norm, stride, b.dilation, groups)
            for b in sk.branches)
        self.attn = SelectiveKernelAttn(cout, sk.attn_width(cout), self.num_branches, norm)
        self.record = False
        self.recorded = None

    def forward(self, x):
        if self.split_input:
            inputs = torch.chunk(x, self.num_branches, dim=1)
        else:
            inputs = [x] * self.num_branches
        branches = [path(inp) for path, inp in zip(self.paths, inputs)]
        # Training too: the rewrite's gradients agree with MindSpore's softmax form within
        # 4e-6 once both replay the same ReLU signs (docs/parity.md, findings 7 and 8).
        if FAST and self.num_branches == 2:
            return self._select_two(*branches)
        fused = branches[0]
        for y in branches[1:]:
            fused = fused + y
        weights = self.attn(fused)
        out = branches[0] * weights[:, 0]
        for i in range(1, self.num_branches):
            out = out + branches[i] * weights[:, i]
        if self.record:
            self.recorded = (weights.detach(), [y.detach() for y in branches])
        return out

    def _select_two(self, b0, b1):
        # mean(b0 + b1) = (sum(b0) + sum(b1)) / HW: the branch sum is never materialised, and
        # dividing the pooled (B, C, 1, 1) rather than taking means keeps the backward of
        # each branch's pooling a broadcast view instead of a (B, C, H, W) division.
        pooled = (b0.sum((2, 3), keepdim=True) + b1.sum((2, 3), keepdim=True)) / (b0.shape[2] * b0.shape[3])
        logits = self.attn.logits(pooled)
        # Softmax over two logits is sigmoid of their difference, and
        # w0 * b0 + (1 - w0) * b1 is one lerp from b1 towards b0.
        w0 = torch.sigmoid(logits[:, 0] - logits[:, 1])
        if self.record:
            weights = torch.stack([w0, 1 - w0], dim=1)
            self.recorded = (weights.detach(), [b0.detach(), b1.detach()])
            return torch.lerp(b1, b0, w0)
        if torch.is_grad_enabled():
            return torch.lerp(b1, b0, w0)
        return b1.lerp_(b0, w0)  # no autograd: reuse b1's memory


class BasicBlock(nn.Module):
    def __init__(self, spec, inplanes, planes, stride):
        super().__init__()
        norm = spec.norm
        self.conv1 = SelectiveKernel(inplanes, planes, spec.sk, norm, stride)
        self.conv2 = ConvBnAct(planes, planes, 3, norm, act=False)
        self.downsample = downsample(spec, inplanes, planes, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        shortcut = x if self.downsample is None else run_downsample(self.downsample, x)
        if FAST:
            return self.conv2(self.conv1(x), residual=shortcut, residual_act=self.act)
        return self.act(self.conv2(self.conv1(x)) + shortcut)


class Bottleneck(nn.Module):
    def __init__(self, spec, inplanes, planes, stride):
        super().__init__()
        norm, width = spec.norm, spec.block_width(planes)
        out = planes * spec.expansion
        self.conv1 = ConvBnAct(inplanes, width, 1, norm, act=spec.block.first_relu)
        self.conv2 = SelectiveKernel(width, width, spec.sk, norm, stride, spec.stages.groups)
        self.conv3 = ConvBnAct(width, out, 1, norm, act=False)
        self.downsample = downsample(spec, inplanes, out, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        shortcut = x if self.downsample is None else run_downsample(self.downsample, x)
        if FAST:
            return self.conv3(self.conv2(self.conv1(x)), residual=shortcut, residual_act=self.act)
        return self.act(self.conv3(self.conv2(self.conv1(x))) + shortcut)


def downsample(spec, inplanes, out, stride):
    if stride == 1 and inplanes == out:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), batch_norm(out, spec.norm))


def run_downsample(seq, x):
    if inferring(seq, x):
        return conv_bn_infer(x, seq[0], seq[1], False)
    return seq(x)


class SamePadMaxPool2d(nn.Module):
    """Max-pool padded as TensorFlow's / MindSpore's ``pad_mode="same"``: extra rows bottom/right."""

    def __init__(self, pool):
        super().__init__()
        self.pool = pool

    def forward(self, x):
        top, bottom, left, right = pool_pads(self.pool, *x.shape[2:])
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.pool.kernel_size, self.pool.stride)


def max_pool(pool):
    if pool is None:
        return nn.Identity()
    if pool.padding == "same":
        return SamePadMaxPool2d(pool)
    return nn.MaxPool2d(pool.kernel_size, pool.stride, (pool.kernel_size - 1) // 2)
