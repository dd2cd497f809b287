"""Reusable MindSpore cells of an SKNet, mirroring ``backends.torch.layers`` name for name.

Convs pad explicitly and symmetrically (``pad_mode="pad"``) so they compute what
PyTorch's do; only a spec asking for "same" pooling gets MindSpore's "same".
"""
from mindspore import nn, ops


def batch_norm(channels, norm):
    # MindSpore's momentum weighs the old statistic: 1 - PyTorch's.
    return nn.BatchNorm2d(channels, eps=norm.eps, momentum=1.0 - norm.momentum)


def conv2d(cin, cout, kernel, stride=1, dilation=1, groups=1):
    return nn.Conv2d(cin, cout, kernel, stride, pad_mode="pad", padding=dilation * (kernel - 1) // 2,
                     dilation=dilation, group=groups, has_bias=False, weight_init="zeros")


class ConvBnAct(nn.Cell):
    def __init__(self, cin, cout, kernel, norm, stride=1, dilation=1, groups=1, act=True):
        super().__init__()
        self.conv = conv2d(cin, cout, kernel, stride, dilation, groups)
        self.bn = batch_norm(cout, norm)
        self.use_act = act
        self.act = nn.ReLU()

    def construct(self, x):
        x = self.bn(self.conv(x))
        if self.use_act:
            x = self.act(x)
        return x


class SelectiveKernelAttn(nn.Cell):
    def __init__(self, channels, attn_width, num_branches, norm):
        super().__init__()
        self.num_branches = num_branches
        self.fc_reduce = conv2d(channels, attn_width, 1)
        self.bn = batch_norm(attn_width, norm)
        self.act = nn.ReLU()
        self.fc_select = conv2d(attn_width, channels * num_branches, 1)

    def construct(self, fused):
        s = fused.mean(axis=(2, 3), keep_dims=True)
        logits = self.fc_select(self.act(self.bn(self.fc_reduce(s))))
        b = logits.shape[0]
        return ops.softmax(logits.reshape(b, self.num_branches, -1, 1, 1), axis=1)


class SelectiveKernel(nn.Cell):
    """The SK unit; ``record = True`` (PYNATIVE only) keeps the last weights and branch outputs."""

    def __init__(self, cin, cout, sk, norm, stride=1, groups=1):
        super().__init__()
        self.split_input = sk.split_input
        self.num_branches = sk.num_branches
        groups = min(cout, groups)
        self.branch_in = cin // self.num_branches if sk.split_input else cin
        self.paths = nn.CellList([
            ConvBnAct(self.branch_in, cout, b.kernel_size, norm, stride, b.dilation, groups)
            for b in sk.branches])
        self.attn = SelectiveKernelAttn(cout, sk.attn_width(cout), self.num_branches, norm)
        self.record = False
        self.recorded = None

    def construct(self, x):
        branches = []
        for i in range(self.num_branches):
            inp = x
            if self.split_input:
                inp = x[:, i * self.branch_in:(i + 1) * self.branch_in]
            branches.append(self.paths[i](inp))
        fused = branches[0]
        for i in range(1, self.num_branches):
            fused = fused + branches[i]
        weights = self.attn(fused)
        out = branches[0] * weights[:, 0]
        for i in range(1, self.num_branches):
            out = out + branches[i] * weights[:, i]
        if self.record:
            self.recorded = (weights, branches)
        return out


class BasicBlock(nn.Cell):
    def __init__(self, spec, inplanes, planes, stride):
        super().__init__()
        norm = spec.norm
        self.conv1 = SelectiveKernel(inplanes, planes, spec.sk, norm, stride)
        self.conv2 = ConvBnAct(planes, planes, 3, norm, act=False)
        self.downsample = downsample(spec, inplanes, planes, stride)
        self.has_downsample = self.downsample is not None
        self.act = nn.ReLU()

    def construct(self, x):
        shortcut = self.downsample(x) if self.has_downsample else x
        return self.act(self.conv2(self.conv1(x)) + shortcut)


class Bottleneck(nn.Cell):
    def __init__(self, spec, inplanes, planes, stride):
        super().__init__()
        norm, width = spec.norm, spec.block_width(planes)
        out = planes * spec.expansion
        self.conv1 = ConvBnAct(inplanes, width, 1, norm, act=spec.block.first_relu)
        self.conv2 = SelectiveKernel(width, width, spec.sk, norm, stride, spec.stages.groups)
        self.conv3 = ConvBnAct(width, out, 1, norm, act=False)
        self.downsample = downsample(spec, inplanes, out, stride)
        self.has_downsample = self.downsample is not None
        self.act = nn.ReLU()

    def construct(self, x):
        shortcut = self.downsample(x) if self.has_downsample else x
        return self.act(self.conv3(self.conv2(self.conv1(x))) + shortcut)


def downsample(spec, inplanes, out, stride):
    if stride == 1 and inplanes == out:
        return None
    return nn.SequentialCell([conv2d(inplanes, out, 1, stride), batch_norm(out, spec.norm)])


def max_pool(pool):
    if pool is None:
        return nn.Identity()
    if pool.padding == "same":
        return nn.MaxPool2d(pool.kernel_size, pool.stride, pad_mode="same")
    return nn.MaxPool2d(pool.kernel_size, pool.stride, pad_mode="pad", padding=(pool.kernel_size - 1) // 2)
