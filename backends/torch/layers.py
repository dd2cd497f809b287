"""Reusable PyTorch layers of an SKNet, built from the block plan (``sknet.plan``).

These modules are the definition: each computes its layer module by module, as the paper
and timm write it, and every one of them passes ``torch.jit.script``, ``torch.jit.trace``,
``torch.fx.symbolic_trace`` and ``torch.compile(fullgraph=True)``. The speed-ups (BN
folding, fused oneDNN calls, NHWC, the two-branch select) live in ``fast.py`` and are
applied to a built model by ``fast.accelerate``.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sknet.plan import same_pads
from sknet.tree import block_parts


def batch_norm(channels, norm):
    return nn.BatchNorm2d(channels, eps=norm.eps, momentum=norm.momentum)


def conv2d(c):
    """The bias-free ``nn.Conv2d`` a ``ConvPlan`` describes."""
    return nn.Conv2d(c.in_ch, c.out_ch, c.kernel, c.stride, c.padding, c.dilation, c.groups, bias=False)


class ConvBnAct(nn.Module):
    def __init__(self, conv, norm, act=True):
        super().__init__()
        self.conv = conv2d(conv)
        self.bn = batch_norm(conv.out_ch, norm)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class SelectiveKernelAttn(nn.Module):
    """Fuse and score: the pooled branch sum (B, C, 1, 1) reduced to d with BN-ReLU, expanded
    to the selection logits (B, M, C, 1, 1). fc_select's channels [i*C, (i+1)*C) score branch
    i, as in timm and mindcv."""

    def __init__(self, channels, attn_width, num_branches, norm):
        super().__init__()
        self.num_branches, self.channels = num_branches, channels
        self.fc_reduce = nn.Conv2d(channels, attn_width, 1, bias=False)
        self.bn = batch_norm(attn_width, norm)
        self.act = nn.ReLU(inplace=True)
        self.fc_select = nn.Conv2d(attn_width, channels * num_branches, 1, bias=False)

    def forward(self, pooled):
        logits = self.fc_select(self.act(self.bn(self.fc_reduce(pooled))))
        return logits.view(-1, self.num_branches, self.channels, 1, 1)


class SelectiveKernel(nn.Module):
    """The SK unit: M conv branches of different dilation, fused by sum, selected per channel
    by a softmax across the branches."""

    def __init__(self, sk, norm):
        super().__init__()
        self.split_input = sk.split_input
        self.num_branches = sk.num_branches
        self.branch_in = sk.branch_in
        self.paths = nn.ModuleList(ConvBnAct(branch, norm) for branch in sk.branches)
        self.attn = SelectiveKernelAttn(sk.channels, sk.attn_width, sk.num_branches, norm)

    def branches(self, x) -> List[torch.Tensor]:
        if self.split_input:
            inputs = torch.split(x, self.branch_in, dim=1)
        else:
            inputs = [x] * self.num_branches
        out: List[torch.Tensor] = []
        for i, path in enumerate(self.paths):
            out.append(path(inputs[i]))
        return out

    def forward(self, x):
        # As timm writes it: the branches stacked on a new axis (B, M, C, H, W), summed to
        # fuse, and summed again under the softmax weights (B, M, C, 1, 1) to select.
        paths = torch.stack(self.branches(x), dim=1)
        weights = torch.softmax(self.attn(paths.sum(1).mean((2, 3), keepdim=True)), dim=1)
        return (paths * weights).sum(1)


def downsample(block, norm):
    """1x1 conv + BN on the shortcut where the block changes size or width (timm's names 0, 1)."""
    if block.downsample is None:
        return None
    return nn.Sequential(conv2d(block.downsample), batch_norm(block.out_ch, norm))


class DropPath(nn.Module):
    """Stochastic depth (timm's ``DropPath``): in training each sample's residual branch is
    dropped with probability ``rate``, else scaled by 1 / (1 - rate). The decisions come
    from the model's ``sknet.stochastic.DropSource``, as on MindSpore."""

    def __init__(self, rate, source):
        super().__init__()
        self.rate, self.source = rate, source

    def forward(self, x):
        if not self.training:
            return x
        return x * self.scales(x)

    @torch.jit.unused
    def scales(self, x) -> torch.Tensor:
        return torch.from_numpy(self.source.keep_scales(x.shape[0], self.rate)).to(x).view(-1, 1, 1, 1)


class ResidualBlock(nn.Module):
    """A block's residual branch (``sknet.tree.block_parts``), stochastic depth on it, its
    shortcut and the ReLU after their sum."""

    def __init__(self, block, norm, source=None):
        super().__init__()
        for name, role, plan, act in block_parts(block):
            self.add_module(name, SelectiveKernel(plan, norm) if role == "sk" else ConvBnAct(plan, norm, act))
        self.downsample = downsample(block, norm)
        self.drop_path = DropPath(block.drop_path, source) if block.drop_path else nn.Identity()
        self.act = nn.ReLU(inplace=True)


class BasicBlock(ResidualBlock):
    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(self.drop_path(self.conv2(self.conv1(x))) + shortcut)


class Bottleneck(ResidualBlock):
    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(self.drop_path(self.conv3(self.conv2(self.conv1(x)))) + shortcut)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class SamePadMaxPool2d(nn.Module):
    """Max-pool padded as TensorFlow's / MindSpore's ``pad_mode="same"``: extra rows bottom/right."""

    def __init__(self, pool):
        super().__init__()
        self.kernel_size, self.stride = pool.kernel_size, pool.stride

    def pads(self, n: int) -> Tuple[int, int]:
        return same_pads(n, self.kernel_size, self.stride)

    def forward(self, x):
        top, bottom = self.pads(x.shape[2])
        left, right = self.pads(x.shape[3])
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


def max_pool(pool):
    if pool is None:
        return nn.Identity()
    if pool.padding == "same":
        return SamePadMaxPool2d(pool)
    if pool.padding == "caffe":
        return nn.MaxPool2d(pool.kernel_size, pool.stride, 0, ceil_mode=True)
    return nn.MaxPool2d(pool.kernel_size, pool.stride, (pool.kernel_size - 1) // 2)
