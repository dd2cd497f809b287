"""PyTorch speed-ups of an SKNet, applied to a built model by ``accelerate(model)``.

Each fast module is a subclass of its reference module in ``layers.py`` with the same
children, parameters and names (state dicts, hooks and checkpoints do not change), and
computes the same function (docs/performance.md has the measurements, docs/parity.md
the tolerances):
- inference (eval mode, autograd off): each BN folded into the conv before it and, on the
  CPU in fp32, conv + bias + ReLU (+ the residual add) as one oneDNN call with prepacked
  weights;
- the two-branch SK select as a sigmoid and one lerp, its pooling as branch sums;
- CPU fp32: NHWC through the network, stride-d dilation-d convs as dense convs of every
  d-th pixel, the smallest maps NCHW in training.
What this costs: Python-side caches and shape-dependent choices, so an accelerated model
does not script or trace; the reference model does.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from sknet.plan import build_plan
from sknet.taps import tap_plan

from .layers import BasicBlock, Bottleneck, ConvBnAct, DropPath, SelectiveKernel, SelectiveKernelAttn
from .model import SKNet

# Pixels per map at and below which a training stage runs NCHW on the CPU (see FastSKNet).
SMALL_MAP = 7 * 7


def _mkldnn_op():
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


_POINTWISE = _mkldnn_op() if torch.backends.mkldnn.is_available() else None


def inferring(module, x):
    """True where the folded inference path may replace the module-by-module one."""
    return not module.training and not torch.is_grad_enabled() and x.dtype in (torch.float32, torch.float64)


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


class LiveTapConv2d(nn.Conv2d):
    """A conv that leaves out the kernel taps meeting nothing but padding (``sknet.taps``), on the CPU.

    The same products and the same zero gradients for the left-out weights; oneDNN's
    backward of a 512-channel 3x3 conv on a 1x1 map cost 14 ms against the 1x1 conv's 2.
    """

    @staticmethod
    def applies(conv):
        return conv.padding_mode == "zeros" and max(conv.kernel_size) > 1 and isinstance(conv.padding, tuple)

    def _conv_forward(self, x, weight, bias):
        return self._live_conv(x, weight, bias, self.stride, self.padding, self.dilation)

    def _live_conv(self, x, weight, bias, stride, padding, dilation):
        plans = self.__dict__.setdefault("_tap_plans", {})
        key = (tuple(x.shape[-2:]), stride, padding, dilation)
        if key not in plans:
            plans[key] = tap_plan(key[0], self.kernel_size, stride, padding, dilation)
        plan = plans[key] if x.device.type == "cpu" else None  # measured on oneDNN only
        if plan is None:
            return F.conv2d(x, weight, bias, stride, padding, dilation, self.groups)
        r0, r1, c0, c1, ph, pw = plan
        return F.conv2d(x, weight[:, :, r0:r1, c0:c1], bias, stride, (ph, pw), dilation, self.groups)


class SubsampledConv2d(LiveTapConv2d):
    """A stride-d, dilation-d conv run as a dense conv of every d-th pixel (on the CPU).

    With stride = dilation = d and padding d*(k-1)/2, every tap lands on a multiple of d:
    the conv is a stride-1, undilated one over ``x[..., ::d, ::d]`` with padding (k-1)/2.
    Same weights, same products; oneDNN's backward of the strided dilated form ran 1.2-1.9x
    slower than the dense one (the dilated branch of every stride-2 SK unit).
    """

    @staticmethod
    def applies(conv):
        k, d = conv.kernel_size, conv.dilation
        return (d[0] > 1 and conv.stride == d and all(n % 2 for n in k) and conv.padding_mode == "zeros"
                and conv.padding == tuple(di * (ki - 1) // 2 for di, ki in zip(d, k)))

    def _conv_forward(self, x, weight, bias):
        if x.device.type != "cpu":  # measured on oneDNN only
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        (dh, dw), (kh, kw) = self.dilation, self.kernel_size
        return self._live_conv(x[:, :, ::dh, ::dw], weight, bias, (1, 1), ((kh - 1) // 2, (kw - 1) // 2), (1, 1))


class FastConvBnAct(ConvBnAct):
    def forward(self, x):
        if inferring(self, x):
            return conv_bn_infer(x, self.conv, self.bn, isinstance(self.act, nn.ReLU))
        return super().forward(x)

    def forward_residual(self, x, residual, act):
        """``act(bn(conv(x)) + residual)``; ``act`` is the block's own ReLU module, so that hooks
        on it (the parity checks record and replay its signs) see what the reference runs."""
        if inferring(self, x):
            return conv_bn_infer(x, self.conv, self.bn, True, residual)
        y = self.act(self.bn(self.conv(x)))
        y += residual  # BN's backward needs its input, not its output: safe in place
        return act(y)


class FastSelectiveKernelAttn(SelectiveKernelAttn):
    def forward(self, pooled):
        if inferring(self, pooled):
            z = conv_bn_infer(pooled, self.fc_reduce, self.bn, True)
        else:
            z = self.act(self.bn(self.fc_reduce(pooled)))
        return self.fc_select(z).view(-1, self.num_branches, self.channels, 1, 1)


class FastSelectiveKernel(SelectiveKernel):
    def forward(self, x):
        if self.num_branches != 2:
            return super().forward(x)
        b0, b1 = self.branches(x)
        # mean(b0 + b1) = (sum(b0) + sum(b1)) / HW: the branch sum is never materialised, and
        # dividing the pooled (B, C, 1, 1) rather than taking means keeps the backward of
        # each branch's pooling a broadcast view instead of a (B, C, H, W) division.
        pooled = (b0.sum((2, 3), keepdim=True) + b1.sum((2, 3), keepdim=True)) / (b0.shape[2] * b0.shape[3])
        logits = self.attn(pooled)
        # Softmax over two logits is sigmoid of their difference, and
        # w0 * b0 + (1 - w0) * b1 is one lerp from b1 towards b0.
        w0 = torch.sigmoid(logits[:, 0] - logits[:, 1])
        if torch.is_grad_enabled():
            return torch.lerp(b1, b0, w0)
        return b1.lerp_(b0, w0)  # no autograd: reuse b1's memory


def _shortcut(block, x):
    seq = block.downsample
    if seq is None:
        return x
    if inferring(seq, x):
        return conv_bn_infer(x, seq[0], seq[1], False)
    return seq(x)


def _dropping(block):
    """True while stochastic depth acts: the reference forward applies it between the branch and the add."""
    return block.training and isinstance(block.drop_path, DropPath)


class FastBasicBlock(BasicBlock):
    def forward(self, x):
        if _dropping(self):
            return super().forward(x)
        return self.conv2.forward_residual(self.conv1(x), _shortcut(self, x), self.act)


class FastBottleneck(Bottleneck):
    def forward(self, x):
        if _dropping(self):
            return super().forward(x)
        return self.conv3.forward_residual(self.conv2(self.conv1(x)), _shortcut(self, x), self.act)


class FastSKNet(SKNet):
    def forward_features(self, x):
        infer = inferring(self, x)
        # oneDNN's CPU convolutions, forward and backward, run NHWC without the per-call
        # NCHW reorders (a skresnet18 training step 340 -> 303 ms, SKNet-50 1251 -> 1045 ms);
        # the parameters keep their layout, so state dicts and names do not change.
        nhwc = x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        if infer:
            x = self.maxpool(conv_bn_infer(x, self.conv1, self.bn1, True))
        else:
            x = self.forward_stem(x)
        for stage in build_plan(self.spec).stages:
            stride = stage.blocks[0].stride
            out_pixels = math.ceil(x.shape[2] / stride) * math.ceil(x.shape[3] / stride)
            if nhwc and not infer and out_pixels <= SMALL_MAP:
                # Except where oneDNN's NHWC weight gradients lose to its NCHW ones: on the
                # smallest maps (512-channel 3x3 at 7x7: 11.6 vs 5.9 ms), training runs NCHW.
                x = x.contiguous()
            x = getattr(self, stage.name)(x)
        return x

    def train(self, mode=True):
        # Folded inference weights are keyed on weight versions already; dropping them
        # here just frees their memory while training.
        drop_folded(self)
        return super().train(mode)


FAST = {ConvBnAct: FastConvBnAct, SelectiveKernelAttn: FastSelectiveKernelAttn,
        SelectiveKernel: FastSelectiveKernel, BasicBlock: FastBasicBlock, Bottleneck: FastBottleneck,
        SKNet: FastSKNet}


def accelerate(model):
    """Give ``model`` (an ``SKNet`` of ``model.py``) its fast paths, in place; returns it.

    Only the modules' classes change, to the subclasses above: parameters, buffers, names
    and registered hooks stay as they are.
    """
    for module in model.modules():
        fast = FAST.get(type(module))
        if fast is not None:
            module.__class__ = fast
        elif type(module) is nn.Conv2d and SubsampledConv2d.applies(module):
            module.__class__ = SubsampledConv2d
        elif type(module) is nn.Conv2d and LiveTapConv2d.applies(module):
            module.__class__ = LiveTapConv2d
    return model


def is_accelerated(model):
    return isinstance(model, FastSKNet)
