"""Reusable PyTorch layers of an SKNet: conv-BN-act, the SK unit, the residual blocks."""
import torch
import torch.nn.functional as F
from torch import nn


def batch_norm(channels, norm):
    return nn.BatchNorm2d(channels, eps=norm.eps, momentum=norm.momentum)


class ConvBnAct(nn.Module):
    def __init__(self, cin, cout, kernel, norm, stride=1, dilation=1, groups=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, dilation * (kernel - 1) // 2, dilation,
                              groups, bias=False)
        self.bn = batch_norm(cout, norm)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class SelectiveKernelAttn(nn.Module):
    """Fuse (sum, global pool, reduce to d with BN-ReLU) and select (softmax over the M branches)."""

    def __init__(self, channels, attn_width, num_branches, norm):
        super().__init__()
        self.num_branches = num_branches
        self.fc_reduce = nn.Conv2d(channels, attn_width, 1, bias=False)
        self.bn = batch_norm(attn_width, norm)
        self.act = nn.ReLU(inplace=True)
        self.fc_select = nn.Conv2d(attn_width, channels * num_branches, 1, bias=False)

    def forward(self, fused):
        s = fused.mean((2, 3), keepdim=True)
        z = self.act(self.bn(self.fc_reduce(s)))
        logits = self.fc_select(z)
        b, _, _, _ = logits.shape
        # fc_select's channels [i*C, (i+1)*C) score branch i, as in timm and mindcv.
        return torch.softmax(logits.view(b, self.num_branches, -1, 1, 1), dim=1)


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


class BasicBlock(nn.Module):
    def __init__(self, spec, inplanes, planes, stride):
        super().__init__()
        norm = spec.norm
        self.conv1 = SelectiveKernel(inplanes, planes, spec.sk, norm, stride)
        self.conv2 = ConvBnAct(planes, planes, 3, norm, act=False)
        self.downsample = downsample(spec, inplanes, planes, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
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
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(self.conv3(self.conv2(self.conv1(x))) + shortcut)


def downsample(spec, inplanes, out, stride):
    if stride == 1 and inplanes == out:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), batch_norm(out, spec.norm))


class SamePadMaxPool2d(nn.Module):
    """Max-pool padded as TensorFlow's / MindSpore's ``pad_mode="same"``: extra rows bottom/right."""

    def __init__(self, kernel_size, stride):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x):
        pads = []
        for size in (x.shape[-1], x.shape[-2]):
            total = max((-(-size // self.stride) - 1) * self.stride + self.kernel_size - size, 0)
            pads += [total // 2, total - total // 2]
        x = F.pad(x, pads, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


def max_pool(pool):
    if pool is None:
        return nn.Identity()
    if pool.padding == "same":
        return SamePadMaxPool2d(pool.kernel_size, pool.stride)
    return nn.MaxPool2d(pool.kernel_size, pool.stride, (pool.kernel_size - 1) // 2)
