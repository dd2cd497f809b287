"""Reference MindSpore cells of an SKNet, built from the block plan (``sknet.plan``).

The same tree and parameter names as ``sknet.backends.torch.layers``; each cell computes
its layer as written, one MindSpore op after another. Convs pad explicitly and
symmetrically (``pad_mode="pad"``) so they compute what PyTorch's do; only a spec asking
for "same" pooling gets MindSpore's "same". The CPU speed-ups replace some of these cells
in a built net (``fast.accelerate``); nothing here knows about them.
"""
import mindspore as ms
from mindspore import nn, ops

from sknet.plan import ConvPlan
from sknet.tree import block_parts


def conv2d(c):
    """The bias-free conv of the ``ConvPlan`` ``c``; its weight is set by the caller."""
    return nn.Conv2d(c.in_ch, c.out_ch, c.kernel, c.stride, pad_mode="pad", padding=c.padding,
                     dilation=c.dilation, group=c.groups, has_bias=False, weight_init="zeros")


def batch_norm(channels, norm):
    # MindSpore's momentum weighs the old statistic: 1 - PyTorch's.
    return nn.BatchNorm2d(channels, eps=norm.eps, momentum=1.0 - norm.momentum)


class ConvBnAct(nn.Cell):
    def __init__(self, conv, norm, act=True):
        super().__init__()
        self.conv = conv2d(conv)
        self.bn = batch_norm(conv.out_ch, norm)
        self.use_act = act
        self.act = nn.ReLU()

    def construct(self, x):
        x = self.bn(self.conv(x))
        if self.use_act:
            x = self.act(x)
        return x


class SelectiveKernelAttn(nn.Cell):
    """Pooled branch sum (B, C, 1, 1) -> selection logits (B, M, C, 1, 1); the unit takes the softmax."""

    def __init__(self, sk, norm):
        super().__init__()
        self.num_branches = sk.num_branches
        self.fc_reduce = conv2d(ConvPlan(sk.channels, sk.attn_width))
        self.bn = batch_norm(sk.attn_width, norm)
        self.act = nn.ReLU()
        self.fc_select = conv2d(ConvPlan(sk.attn_width, sk.channels * sk.num_branches))

    def construct(self, pooled):
        logits = self.fc_select(self.act(self.bn(self.fc_reduce(pooled))))
        return logits.reshape(logits.shape[0], self.num_branches, -1, 1, 1)


class SelectiveKernel(nn.Cell):
    """The SK unit of the ``SKPlan`` ``sk``: M branches, fused by sum, recombined by softmax weights."""

    def __init__(self, sk, norm):
        super().__init__()
        self.split_input = sk.split_input
        self.num_branches = sk.num_branches
        self.branch_in = sk.branch_in
        self.paths = nn.CellList([ConvBnAct(b, norm) for b in sk.branches])
        self.attn = SelectiveKernelAttn(sk, norm)

    def run_paths(self, x):
        """Every branch's output, in order; with a split input branch i sees channel slice i."""
        outs = []
        for i in range(self.num_branches):
            inp = x
            if self.split_input:
                inp = x[:, i * self.branch_in:(i + 1) * self.branch_in]
            outs.append(self.paths[i](inp))
        return outs

    def construct(self, x):
        branches = self.run_paths(x)
        fused = branches[0]
        for i in range(1, self.num_branches):
            fused = fused + branches[i]
        weights = ops.softmax(self.attn(fused.mean(axis=(2, 3), keep_dims=True)), axis=1)
        out = branches[0] * weights[:, 0]
        for i in range(1, self.num_branches):
            out = out + branches[i] * weights[:, i]
        return out


def downsample(block, norm):
    """The projection shortcut (1x1 conv, BN) where ``block`` changes size or channels, else None."""
    if block.downsample is None:
        return None
    return nn.SequentialCell([conv2d(block.downsample), batch_norm(block.out_ch, norm)])


class DropPath(nn.Cell):
    """Stochastic depth, as ``sknet.backends.torch.layers.DropPath``: the decisions come from
    the model's ``sknet.stochastic.DropSource`` (NumPy, on the host), so PyTorch and MindSpore
    drop the same samples. Host-side draws need PYNATIVE mode (what the trainer runs); a
    GRAPH-mode training pass fails to compile here: stochastic depth is PYNATIVE only."""

    def __init__(self, rate, source):
        super().__init__()
        self.rate, self.source = rate, source

    def construct(self, x):
        if not self.training:
            return x
        if ms.get_context("mode") != ms.PYNATIVE_MODE:
            raise RuntimeError("stochastic depth (drop_path_rate > 0) trains in MindSpore's PYNATIVE mode only")
        scales = ms.Tensor(self.source.keep_scales(x.shape[0], self.rate)).astype(x.dtype)
        return x * scales.reshape(-1, 1, 1, 1)


class ResidualBlock(nn.Cell):
    """A block's residual branch (``sknet.tree.block_parts``), stochastic depth on it, its
    shortcut and the ReLU after their sum; GRAPH mode branches on constants."""

    def __init__(self, block, norm, source=None):
        super().__init__()
        for name, role, plan, act in block_parts(block):
            self.insert_child_to_cell(name, SelectiveKernel(plan, norm) if role == "sk" else ConvBnAct(plan, norm, act))
        self.downsample = downsample(block, norm)
        self.has_downsample = self.downsample is not None
        self.drop_path = DropPath(block.drop_path, source) if block.drop_path else nn.Identity()
        self.act = nn.ReLU()


class BasicBlock(ResidualBlock):
    """SK unit (with the block's stride), then a 3x3 conv-BN; ReLU after the residual add."""

    def construct(self, x):
        shortcut = self.downsample(x) if self.has_downsample else x
        return self.act(self.drop_path(self.conv2(self.conv1(x))) + shortcut)


class Bottleneck(ResidualBlock):
    """1x1 reduce, SK unit, 1x1 expand; ReLU after the residual add."""

    def construct(self, x):
        shortcut = self.downsample(x) if self.has_downsample else x
        return self.act(self.drop_path(self.conv3(self.conv2(self.conv1(x)))) + shortcut)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def max_pool(pool):
    """The stem's max-pool of the ``PoolSpec`` ``pool`` (identity for None).

    "same" is MindSpore's own rule (TensorFlow's): the odd extra row and column of padding
    go bottom/right, as ``sknet.plan.pool_pads`` says; "symmetric" pads (k - 1) / 2 all round;
    "caffe" pads nothing and rounds the output size up.
    """
    if pool is None:
        return nn.Identity()
    k, s = pool.kernel_size, pool.stride
    if pool.padding == "same":
        return nn.MaxPool2d(k, s, pad_mode="same")
    if pool.padding == "caffe":
        return nn.MaxPool2d(k, s, pad_mode="pad", padding=0, ceil_mode=True)
    return nn.MaxPool2d(k, s, pad_mode="pad", padding=(k - 1) // 2)


class GlobalAvgPool(nn.Cell):
    """(B, C, H, W) -> (B, C): the mean over the map."""

    def construct(self, x):
        return x.mean(axis=(2, 3))
