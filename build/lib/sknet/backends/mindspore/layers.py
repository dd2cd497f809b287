"""Reusable MindSpore cells of an SKNet, mirroring ``sknet.backends.torch.layers`` name for name.

Convs pad explicitly and symmetrically (``pad_mode="pad"``) so they compute what
PyTorch's do; only a spec asking for "same" pooling gets MindSpore's "same".

On CPU every conv runs as im2col + MatMul (``conv_gemm``): MindSpore 2.10's CPU Conv2D
kernel reaches a few percent of its own MatMul's rate on 3x3 kernels (docs/performance.md
has the figures). The cells and their parameters stay ``nn.Conv2d``'s.
"""
import os
from contextlib import contextmanager

import mindspore as ms
from mindspore import nn, ops

from sknet.plan import pool_pads

# Fast paths on/off, read when a cell is built (GRAPH mode freezes what construct sees).
FAST = True


@contextmanager
def plain_math():
    """Build cells that run MindSpore's own Conv2D and the softmax selection, as written."""
    global FAST
    old, FAST = FAST, False
    try:
        yield
    finally:
        FAST = old


def gemm_convs():
    """im2col convs on CPU unless oneDNN is held to AVX2 or below.

    On AVX-512 CPUs oneDNN picks, for MindSpore's plain NCHW tensors, a convolution that
    runs a reference loop (docs/training.md); held to AVX2 (``ONEDNN_MAX_CPU_ISA``, as
    ``sknet.train`` sets it) MindSpore's own Conv2D is the faster one again.
    """
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return FAST and ms.get_context("device_target") == "CPU" and isa not in ("AVX2", "AVX", "SSE41")


def _shifted_views(x, kernel, stride, dilation, ho, wo):
    """The k*k input views each kernel tap multiplies, (B, C, ho, wo) each.

    Strided slices would be the direct way, but MindSpore 2.10's CPU StridedSliceGrad
    fails on steps > 1; splitting the input into its stride x stride phases first leaves
    only unit-step slices, whose gradients work.
    """
    b, c, h, w = x.shape
    views = []
    if stride == 1:  # GRAPH mode compiles plain loops, not nested comprehensions
        for i in range(kernel):
            for j in range(kernel):
                views.append(x[:, :, i * dilation:i * dilation + ho, j * dilation:j * dilation + wo])
        return views
    eh, ew = -h % stride, -w % stride
    if eh or ew:  # whole phases; the extra zeros lie beyond every tap's reach
        x = ops.pad(x, (0, ew, 0, eh))
    hp, wp = (h + eh) // stride, (w + ew) // stride
    x = x.reshape(b, c, hp, stride, wp, stride).transpose(3, 5, 0, 1, 2, 4)
    phases = []
    for rows in ops.unstack(x, 0):
        phases.append(ops.unstack(rows, 0))
    for i in range(kernel):
        for j in range(kernel):
            (pi, si), (pj, sj) = divmod(i * dilation, stride)[::-1], divmod(j * dilation, stride)[::-1]
            views.append(phases[pi][pj][:, :, si:si + ho, sj:sj + wo])
    return views


def conv_gemm(x, weight, kernel, stride, padding, dilation, groups):
    """Cross-correlation of NCHW ``x`` with OIHW ``weight`` as one batched MatMul.

    The k*k shifted views of the padded input are stacked behind the channel axis, which
    orders the columns as ``weight.reshape(O, I*k*k)`` orders its rows, so the weight is
    used as stored and the product comes out NCHW.
    """
    b, c, h, w = x.shape
    cout = weight.shape[0]
    span = dilation * (kernel - 1)
    ho = (h + 2 * padding - span - 1) // stride + 1
    wo = (w + 2 * padding - span - 1) // stride + 1
    if padding:
        x = ops.pad(x, (padding, padding, padding, padding))
    views = _shifted_views(x, kernel, stride, dilation, ho, wo)
    if kernel == 1:
        cols = views[0].reshape(b, groups, c // groups, ho * wo)
    else:
        cols = ops.stack(views, axis=2).reshape(b, groups, c // groups * kernel * kernel, ho * wo)
    out = ops.matmul(weight.reshape(groups, cout // groups, -1), cols)
    return out.reshape(b, cout, ho, wo)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameter, same name) that computes through ``conv_gemm`` on CPU."""

    def __init__(self, cin, cout, kernel, stride=1, dilation=1, groups=1):
        super().__init__(cin, cout, kernel, stride, pad_mode="pad", padding=dilation * (kernel - 1) // 2,
                         dilation=dilation, group=groups, has_bias=False, weight_init="zeros")
        self.gemm = gemm_convs()
        self.gemm_args = (kernel, stride, dilation * (kernel - 1) // 2, dilation, groups)

    def construct(self, x):
        if self.gemm:
            kernel, stride, padding, dilation, groups = self.gemm_args
            return conv_gemm(x, self.weight, kernel, stride, padding, dilation, groups)
        return super().construct(x)


_ROW_SUM = ops.ReduceSum(keep_dims=True)


def spatial_sum(x):
    """Per-channel sum over H and W of NCHW ``x``, as (B, C, 1, 1).

    MindSpore 2.10's CPU reduction over two axes of a 4-D tensor runs about 15 times slower
    than over the rows of its (B*C, H*W) view (8x64x56x56: 7.0 ms against 0.46 ms, GRAPH).
    """
    b, c, h, w = x.shape
    return _ROW_SUM(x.reshape(b * c, h * w), 1).reshape(b, c, 1, 1)


def batch_norm(channels, norm):
    # MindSpore's momentum weighs the old statistic: 1 - PyTorch's.
    return nn.BatchNorm2d(channels, eps=norm.eps, momentum=1.0 - norm.momentum)


def conv2d(cin, cout, kernel, stride=1, dilation=1, groups=1):
    return Conv2d(cin, cout, kernel, stride, dilation, groups)


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

    def logits(self, pooled):
        """(B, M, C, 1, 1) selection logits from the pooled branch sum (B, C, 1, 1)."""
        logits = self.fc_select(self.act(self.bn(self.fc_reduce(pooled))))
        return logits.reshape(logits.shape[0], self.num_branches, -1, 1, 1)

    def construct(self, fused):
        return ops.softmax(self.logits(fused.mean(axis=(2, 3), keep_dims=True)), axis=1)


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
        self.two_branch = FAST and self.num_branches == 2

    def construct(self, x):
        branches = []
        for i in range(self.num_branches):
            inp = x
            if self.split_input:
                inp = x[:, i * self.branch_in:(i + 1) * self.branch_in]
            branches.append(self.paths[i](inp))
        if self.two_branch:
            return self.select_two(branches[0], branches[1])
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

    def select_two(self, b0, b1):
        # mean(b0 + b1) = (sum(b0) + sum(b1)) / HW, and softmax over two logits is the sigmoid
        # of their difference: w0 * b0 + (1 - w0) * b1 = b1 + w0 * (b0 - b1). All of it runs on
        # (B*C, H*W) views, so the reductions, the forward's and the backward's of the broadcast
        # weight alike, are single-axis row sums (see ``spatial_sum``).
        b, c, h, w = b0.shape
        x0, x1 = b0.reshape(b * c, h * w), b1.reshape(b * c, h * w)
        pooled = (_ROW_SUM(x0, 1) + _ROW_SUM(x1, 1)) / (h * w)
        logits = self.attn.logits(pooled.reshape(b, c, 1, 1))
        w0 = ops.sigmoid(logits[:, 0] - logits[:, 1])
        if self.record:
            self.recorded = (ops.stack([w0, 1 - w0], axis=1), [b0, b1])
        return (x1 + (x0 - x1) * w0.reshape(b * c, 1)).reshape(b, c, h, w)


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


class MaxPool(nn.Cell):
    """The stem's max-pool; in training, through ``MaxPoolWithArgmax``.

    MindSpore 2.10's CPU ``MaxPoolGrad`` takes 61 ms on an 8x64x112x112 input, where
    ``MaxPoolWithArgmax`` forward and gradient take 26 ms together, with the same gradients
    (ties go to the first window position in both). Inference keeps the plain pool, whose
    forward is the faster one (5 ms against 21).
    """

    def __init__(self, pool):
        super().__init__()
        self.spec = pool
        k, s = pool.kernel_size, pool.stride
        if pool.padding == "same":
            self.pool = nn.MaxPool2d(k, s, pad_mode="same")
        else:
            self.pool = nn.MaxPool2d(k, s, pad_mode="pad", padding=(k - 1) // 2)
        # Padded here, with -inf: its own "same" places the padding of odd-sized maps
        # differently from MaxPool2d's (and TensorFlow's) bottom/right rule.
        self.argmax = ops.MaxPoolWithArgmax(kernel_size=k, strides=s, pad_mode="valid")
        self.argmax_in_training = FAST

    def construct(self, x):
        if self.argmax_in_training and self.training:
            top, bottom, left, right = pool_pads(self.spec, x.shape[2], x.shape[3])
            return self.argmax(pad2d(x, top, bottom, left, right, float("-inf")))[0]
        return self.pool(x)


def pad2d(x, top, bottom, left, right, value):
    """``x`` (B, C, H, W) padded with ``value``, by concatenation.

    MindSpore 2.10's CPU PadV3 takes 65 ms forward and 52 ms backward to pad an
    8x64x112x112 map by one; concatenating constant borders takes 3.5 and 6.6 ms.
    """
    return _bordered(_bordered(x, top, bottom, 2, value), left, right, 3, value)


def _bordered(x, before, after, axis, value):
    # Fixed tuples, not a list built up: GRAPH mode got the gradient of the latter wrong.
    if before and after:
        return ops.concat((_block(x, axis, before, value), x, _block(x, axis, after, value)), axis)
    if before:
        return ops.concat((_block(x, axis, before, value), x), axis)
    if after:
        return ops.concat((x, _block(x, axis, after, value)), axis)
    return x


def _block(x, axis, size, value):
    return ops.fill(x.dtype, x.shape[:axis] + (size,) + x.shape[axis + 1:], value)


def max_pool(pool):
    return nn.Identity() if pool is None else MaxPool(pool)
