"""MindIR files (MindSpore Lite, Ascend): ``mindspore.export`` of the reference cells, read
back with ``mindspore.load`` + ``nn.GraphCell``; also the net MindSpore's ONNX exporter writes.

The file is made from ``FastOptions.plain()`` cells: the speed-ups are chosen for this
process's CPU (im2col convolutions when oneDNN is not held to AVX2), and a file meant for
another device must hold the model's own operators, for its compiler to optimise.
"""
import os
from contextlib import contextmanager

import mindspore as ms
import numpy as np
from mindspore import nn

from sknet.errors import SKNetError, first_line
from sknet.plan import build_plan, pool_pads

from .fast import FastOptions
from .model import build
from .names import load_canonical


def reference(spec, tensors):
    """The eval-mode cell the file is made from and checked against."""
    net = load_canonical(build(spec, options=FastOptions.plain()), tensors)
    net.set_train(False)
    return net


def run(net, x):
    return net(ms.Tensor(x)).asnumpy()


def exportable(net, spec, size):
    """``net``, for ``size`` x ``size`` inputs, with a stem max-pool MindSpore's exporters can write: a padded ``MaxPool2d``
    lowers to MaxPool3DWithArgmax, which the ONNX exporter cannot write and whose MindIR,
    exported with a dynamic batch, fails shape inference when loaded (MindSpore 2.10).

    The stem's pool always follows a ReLU, so its input is >= 0 and zero padding picks the
    same maxima as the -inf padding of a padded pool. The file written is still checked
    against the unmodified cell.
    """
    pool = spec.stem.pool
    if pool is None or pool.padding not in ("symmetric", "caffe"):
        return net
    hw = build_plan(spec, size).stem.conv.out_hw
    top, bottom, left, right = pool_pads(pool, hw, hw)

    class ZeroPadMaxPool(nn.Cell):
        def __init__(self):
            super().__init__()
            self.pad = nn.Pad(((0, 0), (0, 0), (top, bottom), (left, right)))
            self.pool = nn.MaxPool2d(pool.kernel_size, pool.stride, pad_mode="valid")

        def construct(self, x):
            return self.pool(self.pad(x))

    net.maxpool = ZeroPadMaxPool()
    return net


@contextmanager
def graph_mode():
    """GRAPH mode inside (``mindspore.export`` compiles the cell anyway, and from PYNATIVE
    it took ~4x longer here), the caller's mode after."""
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        yield
    finally:
        ms.set_context(mode=mode)


def write(fmt, net, path, example, dynamic):
    """Write ``net`` as MindIR to ``path`` (a name ending in .mindir: MindSpore appends the
    suffix to any other), for inputs shaped like ``example``, the batch left free if ``dynamic``."""
    if fmt != "mindir":
        raise SKNetError(f"MindSpore writes no '{fmt}' files here")
    if not str(path).endswith(".mindir"):
        raise SKNetError(f"{path}: a MindIR file's name must end in .mindir (MindSpore appends it otherwise)")
    spec = net.spec
    arg = (ms.Tensor(shape=[None, *example.shape[1:]], dtype=ms.float32) if dynamic
           else ms.Tensor(np.zeros(example.shape, np.float32)))
    with graph_mode():
        try:
            ms.export(exportable(reference_copy(net), spec, example.shape[-1]), arg, file_name=str(path), file_format="MINDIR")
        except (RuntimeError, ValueError, TypeError) as err:
            raise SKNetError(f"mindspore.export (MINDIR) failed: {first_line(err)}") from None
    if not os.path.exists(path):
        raise SKNetError(f"mindspore.export wrote no {path}")


def reference_copy(net):
    """A second cell with ``net``'s weights: the stem swap must not touch the reference."""
    from .names import to_canonical

    return reference(net.spec, to_canonical(net))


def load(fmt, path):
    """A function numpy -> numpy running the MindIR file at ``path``."""
    try:
        cell = nn.GraphCell(ms.load(str(path)))
    except (RuntimeError, ValueError) as err:
        raise SKNetError(f"{path}: mindspore.load failed: {first_line(err)}") from None

    def forward(x):
        with graph_mode():
            try:
                return cell(ms.Tensor(x)).asnumpy()
            except (RuntimeError, ValueError) as err:
                raise SKNetError(f"the MindIR file fails at input {tuple(x.shape)}: {first_line(err)}") from None

    return forward

