"""MindSpore's CPU speed-ups, applied to a built net from one resolved ``FastOptions``.

GRAPH mode compiles what ``construct`` does on a net's first call, so which cells run is
decided once, when the net is built: ``model.build(spec, options=None)`` takes
``resolve_options()``, the one place that reads the environment (the device target and
whether oneDNN is held to AVX2), and ``accelerate`` swaps the reference cells of
``layers`` for the ones below. The parameters stay the same objects under the same
names. Each rewrite computes the reference's function (docs/performance.md has the
measurements and the tests that hold them to it).
"""
import os
from dataclasses import dataclass

import mindspore as ms
from mindspore import nn, ops

from sknet.plan import pool_pads
from sknet.taps import tap_plan

from .layers import GlobalAvgPool, SelectiveKernel, max_pool
from .names import name_parameters

ISA_VAR = "ONEDNN_MAX_CPU_ISA"
# oneDNN held to one of these runs its AVX2 GEMM convolution for MindSpore's NCHW tensors.
LOW_ISAS = ("AVX2", "AVX", "SSE41")


@dataclass(frozen=True)
class FastOptions:
    """Which rewrites a net is built with.

    gemm_convs:  every conv as im2col + MatMul (``conv_gemm``): on a CPU where oneDNN is not
                 held to AVX2, MindSpore's own Conv2D runs oneDNN's AVX-512 reference loop.
    row_sums:    the head's global pooling as row sums of the (B*C, H*W) view.
    two_branch:  an SK unit of two branches selects by the sigmoid of its two logits, on rows.
    argmax_pool: the stem's max-pool trains through ``MaxPoolWithArgmax``.
    live_taps:   convs leave out the kernel taps that meet only padding (small maps).
    """
    gemm_convs: bool = False
    row_sums: bool = True
    two_branch: bool = True
    argmax_pool: bool = True
    live_taps: bool = True

    @classmethod
    def plain(cls):
        """Nothing rewritten: the reference cells as ``layers`` builds them."""
        return cls(gemm_convs=False, row_sums=False, two_branch=False, argmax_pool=False, live_taps=False)


def onednn_held():
    """True when oneDNN runs held to AVX2 or below.

    ``sknet.backends.mindspore`` sets ``ONEDNN_MAX_CPU_ISA=AVX2`` on import unless the user
    chose a value; when MindSpore was imported before it (and no value was set), its
    default may have come after oneDNN read the variable, so it is not assumed.
    """
    from . import ISA_DEFAULT_TOO_LATE

    return not ISA_DEFAULT_TOO_LATE and os.environ.get(ISA_VAR, "").upper() in LOW_ISAS


def resolve_options(device_target=None):
    """The ``FastOptions`` of this process: every entry point builds its nets with these."""
    cpu = (device_target or ms.get_context("device_target")) == "CPU"
    return FastOptions(gemm_convs=cpu and not onednn_held())


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


class GemmConv2d(nn.Cell):
    """An ``nn.Conv2d`` computed through ``conv_gemm``; holds that conv's own ``weight`` parameter.

    MindSpore 2.10's CPU Conv2D kernel reaches a few percent of its own MatMul's rate on
    3x3 kernels unless oneDNN is held to AVX2 (docs/performance.md has the figures).
    """

    def __init__(self, conv):
        super().__init__()
        self.weight = conv.weight
        # Square kernels and symmetric padding (layers.conv2d): one number each.
        self.gemm_args = (conv.kernel_size[0], conv.stride[0], conv.padding, conv.dilation[0], conv.group)

    def construct(self, x):
        kernel, stride, padding, dilation, groups = self.gemm_args
        return conv_gemm(x, self.weight, kernel, stride, padding, dilation, groups)


class LiveTapConv2d(nn.Cell):
    """An ``nn.Conv2d`` that leaves out the kernel taps meeting nothing but padding (``sknet.taps``);
    holds that conv's own ``weight`` parameter.

    GRAPH mode folds the plan from the static shape; the left-out weights get zero gradients,
    as from the whole conv. MindSpore 2.10's CPU forward and backward of a 512-channel 3x3
    conv on a 128x512x1x1 map took 82 ms, its centre tap alone (a 1x1 conv) 9 ms.
    """

    def __init__(self, conv):
        super().__init__()
        self.weight = conv.weight
        # Symmetric padding (layers.conv2d): one number.
        self.tap_args = (conv.kernel_size, conv.stride, (conv.padding, conv.padding), conv.dilation, conv.group)

    def construct(self, x):
        kernel, stride, padding, dilation, groups = self.tap_args
        plan = tap_plan(x.shape[2:], kernel, stride, padding, dilation)
        if plan is None:
            p = padding[0]
            return ops.conv2d(x, self.weight, None, stride, "pad", (p, p), dilation, groups)
        r0, r1, c0, c1, ph, pw = plan
        return ops.conv2d(x, self.weight[:, :, r0:r1, c0:c1], None, stride, "pad", (ph, pw), dilation, groups)


_ROW_SUM = ops.ReduceSum(keep_dims=True)


def spatial_sum(x):
    """Per-channel sum over H and W of NCHW ``x``, as (B, C, 1, 1).

    MindSpore 2.10's CPU reduction over two axes of a 4-D tensor runs about 15 times slower
    than over the rows of its (B*C, H*W) view (8x64x56x56: 7.0 ms against 0.46 ms, GRAPH).
    """
    b, c, h, w = x.shape
    return _ROW_SUM(x.reshape(b * c, h * w), 1).reshape(b, c, 1, 1)


class RowSumAvgPool(GlobalAvgPool):
    """``GlobalAvgPool`` through ``spatial_sum``."""

    def construct(self, x):
        return spatial_sum(x).reshape(x.shape[0], -1) / (x.shape[2] * x.shape[3])


class TwoBranchSelectiveKernel(SelectiveKernel):
    """A two-branch ``SelectiveKernel`` taking over ``unit``'s own branch and attention cells.

    mean(b0 + b1) = (sum(b0) + sum(b1)) / HW, and the softmax over two logits is the sigmoid
    of their difference: w0 * b0 + (1 - w0) * b1 = b1 + w0 * (b0 - b1). All of it runs on
    (B*C, H*W) views, so the reductions, the forward's and the backward's of the broadcast
    weight alike, are single-axis row sums (see ``spatial_sum``).
    """

    def __init__(self, unit):
        nn.Cell.__init__(self)
        self.split_input, self.num_branches, self.branch_in = unit.split_input, 2, unit.branch_in
        self.paths = unit.paths
        self.attn = unit.attn

    def construct(self, x):
        branches = self.run_paths(x)
        b0, b1 = branches[0], branches[1]
        b, c, h, w = b0.shape
        x0, x1 = b0.reshape(b * c, h * w), b1.reshape(b * c, h * w)
        pooled = (_ROW_SUM(x0, 1) + _ROW_SUM(x1, 1)) / (h * w)
        logits = self.attn(pooled.reshape(b, c, 1, 1))
        w0 = ops.sigmoid(logits[:, 0] - logits[:, 1])
        return (x1 + (x0 - x1) * w0.reshape(b * c, 1)).reshape(b, c, h, w)


class TrainingMaxPool(nn.Cell):
    """The stem's max-pool (``layers.max_pool``), in training through ``MaxPoolWithArgmax``.

    MindSpore 2.10's CPU ``MaxPoolGrad`` takes 61 ms on an 8x64x112x112 input, where
    ``MaxPoolWithArgmax`` forward and gradient take 26 ms together, with the same gradients
    (ties go to the first window position in both). Inference keeps the plain pool, whose
    forward is the faster one (5 ms against 21).
    """

    def __init__(self, pool):
        super().__init__()
        self.spec = pool
        self.pool = max_pool(pool)
        # Padded here, with -inf: its own "same" places the padding of odd-sized maps
        # differently from MaxPool2d's (and TensorFlow's) bottom/right rule.
        self.argmax = ops.MaxPoolWithArgmax(kernel_size=pool.kernel_size, strides=pool.stride, pad_mode="valid")

    def construct(self, x):
        if self.training:
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
        return ops.concat((_border(x, axis, before, value), x, _border(x, axis, after, value)), axis)
    if before:
        return ops.concat((_border(x, axis, before, value), x), axis)
    if after:
        return ops.concat((x, _border(x, axis, after, value)), axis)
    return x


def _border(x, axis, size, value):
    return ops.fill(x.dtype, x.shape[:axis] + (size,) + x.shape[axis + 1:], value)


def _children(net):
    """(parent, child name, child cell) for every cell under ``net``, each cell once."""
    out = []
    for _, parent in list(net.cells_and_names()):
        for name, child in parent.name_cells().items():
            out.append((parent, name, child))
    return out


def _replace(parent, name, cell):
    if isinstance(parent, (nn.SequentialCell, nn.CellList)):
        parent[int(name)] = cell  # keeps the container's own list of its cells in step
    else:
        setattr(parent, name, cell)


def accelerate(net, options):
    """``net`` (an ``SKNet``) with its reference cells swapped, in place, for what ``options`` asks."""
    if options.argmax_pool and net.spec.stem.pool is not None:
        net.maxpool = TrainingMaxPool(net.spec.stem.pool)
    if options.row_sums and isinstance(net.global_pool, GlobalAvgPool):
        net.global_pool = RowSumAvgPool()
    for parent, name, cell in _children(net):
        if options.two_branch and type(cell) is SelectiveKernel and cell.num_branches == 2:
            _replace(parent, name, TwoBranchSelectiveKernel(cell))
    if options.gemm_convs or options.live_taps:
        for parent, name, cell in _children(net):
            if isinstance(cell, nn.Conv2d) and (options.gemm_convs or max(cell.kernel_size) > 1):
                _replace(parent, name, GemmConv2d(cell) if options.gemm_convs else LiveTapConv2d(cell))
    net.options = options
    # Putting a cell under a parent prefixes its parameters' names with the parent's path.
    return name_parameters(net)
