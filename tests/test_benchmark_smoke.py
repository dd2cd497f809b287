"""The benchmark runs end to end, and MindSpore's fast paths compute what its plain cells do.

No timings are asserted (the machine is shared); speed lives in benchmarks/throughput.py.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import images
from sknet import get_spec
from sknet.tree import count_macs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_script_reports_consistent_figures(tmp_path, torch):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "throughput.py"), "--models", "sknet_small",
           "--batch", "2", "--size", "16", "--threads", "1", "--warmup", "1", "--iters", "1",
           "--rounds", "1", "--backends", "torch", "--no-reference", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {(r["impl"], r["task"]): r for r in report["rows"]}
    # Ours as create_model returns it and ours with fast.accelerate, each for both tasks.
    assert set(rows) == {(impl, task) for impl in ("sknet", "sknet-fast") for task in ("infer", "train")}
    assert all(r["roof_gflops"] > 0 for r in rows.values())
    macs = count_macs(get_spec("sknet_small"), 16) * 2
    for (_, task), r in rows.items():
        factor = 3 if task == "train" else 1
        # GFLOP/s is 2 x MACs (x3 for forward+backward) over the median step time.
        assert r["gflops"] * r["ms"] * 1e6 == pytest.approx(2 * macs * factor, rel=1e-9)
        assert r["images_per_s"] == pytest.approx(2e3 / r["ms"], rel=1e-9)
        assert r["roofline"] == pytest.approx(r["gflops"] / r["roof_gflops"], rel=1e-9)
    assert "/timm" not in proc.stdout  # no reference library was asked for


@pytest.mark.parametrize("device", ["tpu9", "xla"])
def test_benchmark_refuses_a_bad_device_in_one_line(device, tmp_path, torch):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "throughput.py"), "--models", "sknet_small",
           "--backends", "torch", "--device", device, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not out.exists() and not list(tmp_path.iterdir())
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and f"--device {device}" in proc.stderr


def small(name):
    """The shipped spec with one narrow block per stage: same layer kinds, a fraction of the cost."""
    spec = get_spec(name)
    stages = dict(depths=[1] * len(spec.stages.depths), channels=[16, 32, 64, 128],
                  strides=list(spec.stages.strides), groups=min(spec.stages.groups, 4),
                  base_width=spec.stages.base_width)
    return spec.derive(stages=stages, num_classes=10)


def test_mindspore_gemm_convs_match_native(pynative):
    import sknet.backends.mindspore as bm
    from sknet.backends.mindspore.fast import FastOptions, GemmConv2d

    ms = pynative
    # Asked for explicitly: where oneDNN is held to AVX2 the resolved options keep the native conv.
    spec = get_spec("sknet_small")
    state = bm.to_canonical(bm.build(spec, seed=4))
    fast = bm.build(spec, options=FastOptions(gemm_convs=True))
    plain = bm.build(spec, options=FastOptions.plain())
    assert isinstance(fast.conv1, GemmConv2d) and not isinstance(plain.conv1, GemmConv2d)
    for net in (fast, plain):
        bm.load_canonical(net, state)
        net.set_train(False)
    x = ms.Tensor(images(spec, 2, size=28))
    ref = plain(x).asnumpy()
    assert np.abs(fast(x).asnumpy() - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("kernel,stride,dilation,size", [(3, 1, 2, 9), (3, 2, 2, 9), (7, 2, 1, 11), (1, 2, 1, 10)])
def test_mindspore_conv_gemm_gradients(kernel, stride, dilation, size, pynative):
    from mindspore import nn

    from sknet.backends.mindspore.fast import conv_gemm

    ms = pynative
    rng = np.random.default_rng(5)
    x = ms.Tensor(rng.standard_normal((2, 4, size, size), dtype=np.float32))
    w = ms.Tensor(rng.standard_normal((6, 4, kernel, kernel), dtype=np.float32))
    pad = dilation * (kernel - 1) // 2
    conv = nn.Conv2d(4, 6, kernel, stride, pad_mode="pad", padding=pad, dilation=dilation, has_bias=False)
    conv.weight.set_data(w)
    ref = ms.grad(lambda a: (conv(a) ** 2).sum())(x).asnumpy()
    got = ms.grad(lambda a, b: (conv_gemm(a, b, kernel, stride, pad, dilation, 1) ** 2).sum(),
                  grad_position=(0, 1))(x, w)
    assert np.abs(got[0].asnumpy() - ref).max() <= 1e-5 * np.abs(ref).max()
    ref_w = ms.grad(lambda a: (conv(a) ** 2).sum(), grad_position=None, weights=[conv.weight])(x)[0]
    assert np.abs(got[1].asnumpy() - ref_w.asnumpy()).max() <= 1e-5 * np.abs(ref_w.asnumpy()).max()


@pytest.mark.parametrize("padding", ["same", "symmetric"])
@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_mindspore_training_pool_matches_maxpool2d(padding, mode, ms):
    from mindspore import nn

    from sknet.backends.mindspore.fast import TrainingMaxPool
    from sknet.spec import PoolSpec

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    try:
        rng = np.random.default_rng(6)
        x = rng.standard_normal((2, 3, 11, 10), dtype=np.float32)
        x[:, :, :5, :6] = 0.5   # tied positive maxima: the first window position must win
        x[:, 1, 6:, :] = -1.0   # tied negative ones (a pool does not always follow a ReLU)
        g = ms.Tensor(rng.standard_normal((2, 3, 6, 5), dtype=np.float32))
        pool = TrainingMaxPool(PoolSpec(padding=padding))
        pool.set_train(True)
        ref_pool = pool.pool  # MindSpore's own nn.MaxPool2d, as inference runs it

        class Loss(nn.Cell):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def construct(self, a, b):
                return (self.net(a) * b).sum()

        got = ms.grad(Loss(pool))(ms.Tensor(x), g).asnumpy()
        ref = ms.grad(Loss(ref_pool))(ms.Tensor(x), g).asnumpy()
        assert np.array_equal(pool(ms.Tensor(x)).asnumpy(), ref_pool(ms.Tensor(x)).asnumpy())
        assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()
        assert np.count_nonzero(got) == np.count_nonzero(ref)  # one winner per window, as MaxPoolGrad
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
