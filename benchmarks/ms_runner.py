"""MindSpore side of the benchmark: our backend and, when importable, mindcv's model."""
import importlib.util

import numpy as np

import measure

SEED = 0
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4
MODES = ("pynative", "graph")

# mindcv's models are our mindcv_* specs (TF-"same" stem pool; its "32x4d" is dense):
# comparing against those keeps the work identical, weights included.
MINDCV_SPEC = {"skresnet18": "mindcv_skresnet18", "skresnext50_32x4d": "mindcv_skresnext50_32x4d"}


def has_mindcv():
    return importlib.util.find_spec("mindcv") is not None


_THREADS = []


def set_threads(n):
    """MindSpore takes its CPU thread count once per process."""
    import mindspore as ms

    if _THREADS:
        if _THREADS[0] != n:
            raise RuntimeError(f"MindSpore already runs on {_THREADS[0]} threads, not {n}")
        return
    ms.set_device("CPU")
    ms.device_context.cpu.op_tuning.threads_num(n)
    _THREADS.append(n)


def roof_gflops(threads):
    """{what: GFLOP/s} of MindSpore's own dense fp32 work on the same threads: the roof for its rows."""
    import mindspore as ms
    from mindspore import ops

    set_threads(threads)
    set_mode("pynative")
    rng = np.random.default_rng(SEED)
    n, (batch, c, h, w) = measure.ROOF_GEMM_N, measure.ROOF_CONV_SHAPE
    a = ms.Tensor(rng.standard_normal((n, n), dtype=np.float32))
    x = ms.Tensor(rng.standard_normal((batch, c, h, w), dtype=np.float32))
    k = ms.Tensor(rng.standard_normal((c, c, 3, 3), dtype=np.float32))
    conv = ops.Conv2D(c, 3, pad_mode="pad", pad=1)
    return {f"ops.matmul {n}^3": measure.best_rate(lambda: ops.matmul(a, a).asnumpy(), measure.ROOF_GEMM_FLOPS),
            f"3x3 Conv2D {batch}x{c}x{h}x{w}": measure.best_rate(
                lambda: conv(x, k).asnumpy(), measure.ROOF_CONV_FLOPS)}


def set_mode(mode):
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)


def _groups(params):
    """Parameters grouped by owning cell, in build order: {suffix: param} per cell."""
    groups, order = {}, []
    for p in params:
        prefix, suffix = p.name.rsplit(".", 1)
        if prefix not in groups:
            groups[prefix] = {}
            order.append(prefix)
        groups[prefix][suffix] = p
    return [groups[k] for k in order]


def copy_weights(src, dst):
    """Copy ``src``'s parameters into ``dst`` cell by cell in build order.

    mindcv names its cells differently (``features.0`` for our ``conv``), but both
    trees are built in the same order with the same parameter suffixes and shapes.
    """
    import mindspore as ms

    a, b = _groups(src.get_parameters()), _groups(dst.get_parameters())
    if len(a) != len(b):
        raise RuntimeError(f"mindcv tree has {len(b)} cells with parameters, ours {len(a)}")
    for ga, gb in zip(a, b):
        if sorted(ga) != sorted(gb):
            raise RuntimeError(f"cell parameters differ: {sorted(ga)} vs {sorted(gb)}")
        for k, p in ga.items():
            if tuple(p.shape) != tuple(gb[k].shape):
                raise RuntimeError(f"{p.name} {tuple(p.shape)} vs {gb[k].name} {tuple(gb[k].shape)}")
            gb[k].set_data(ms.Tensor(p.asnumpy()))


class MSImpl:
    def __init__(self, net, x, y):
        import mindspore as ms
        from mindspore import nn

        self.ms, self.net, self.x, self.y = ms, net, ms.Tensor(x), ms.Tensor(y)
        loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        opt = nn.Momentum(net.trainable_params(), LR, MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.train_net = nn.TrainOneStepCell(nn.WithLossCell(net, loss), opt)

    sync = None  # asnumpy in each step already waits for the asynchronous executor

    def memory(self):
        return measure.PeakRSS()

    def logits(self):
        self.net.set_train(False)
        return self.net(self.x).asnumpy()

    def infer_step(self):
        self.net(self.x).asnumpy()  # asnumpy waits for the asynchronous executor

    def train_step(self):
        self.train_net(self.x, self.y).asnumpy()

    def set_task(self, task):
        self.net.set_train(task == "train")
        self.train_net.set_train(task == "train")
        return self.train_step if task == "train" else self.infer_step


def prepare(name, spec_of, batch, size, reference, compare=True):
    """{label: MSImpl} for ``name`` (mindcv's spec when comparing), and the logit deviation
    (None when not ``compare``: the memory probe wants no pass run before its own)."""
    import sknet.backends.mindspore as bm

    spec = spec_of(MINDCV_SPEC.get(name, name) if reference else name)
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((batch, spec.input.in_chans, size, size), dtype=np.float32)
    y = rng.integers(0, spec.num_classes, batch).astype(np.int32)
    ours = bm.build(spec, seed=SEED)
    impls = {"sknet": MSImpl(ours, x, y)}
    deviation = None
    if reference:
        from mindcv.models import create_model

        theirs = create_model(name, num_classes=spec.num_classes, pretrained=False)
        copy_weights(ours, theirs)
        impls["mindcv"] = MSImpl(theirs, x, y)
    if reference and compare:
        a, b = impls["sknet"].logits(), impls["mindcv"].logits()
        deviation = float(np.abs(a - b).max() / np.abs(b).max())
    return spec, impls, deviation
