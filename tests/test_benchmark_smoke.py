"""The benchmark runs end to end, and every fast path computes what the plain math does.

No timings are asserted (the machine is shared); speed lives in benchmarks/throughput.py.
"""
import contextlib
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
    rows = {r["task"]: r for r in report["rows"]}
    assert set(rows) == {"infer", "train"} and all(r["roof_gflops"] > 0 for r in rows.values())
    macs = count_macs(get_spec("sknet_small"), 16) * 2
    for task, factor in (("infer", 1), ("train", 3)):
        r = rows[task]
        # GFLOP/s is 2 x MACs (x3 for forward+backward) over the median step time.
        assert r["gflops"] * r["ms"] * 1e6 == pytest.approx(2 * macs * factor, rel=1e-9)
        assert r["images_per_s"] == pytest.approx(2e3 / r["ms"], rel=1e-9)
        assert r["roofline"] == pytest.approx(r["gflops"] / r["roof_gflops"], rel=1e-9)
    assert "ours/" not in proc.stdout  # no reference library was asked for


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
    return spec.replace(stages=stages, num_classes=10)


def _trained_stats(model, spec, torch):
    """Non-trivial BN running statistics, so that folding them is actually exercised."""
    model.train()
    with torch.no_grad():
        for seed in range(2):
            model(torch.from_numpy(images(spec, 4, seed=seed + 10, size=32)))
    return model.eval()


@pytest.mark.parametrize("name", ["skresnet18", "skresnext50_32x4d", "mindcv_skresnet18"])
def test_torch_fast_inference_matches_plain_math(name, torch):
    import sknet.backends.torch as bt
    from sknet.backends.torch.layers import plain_math

    spec = small(name)
    model = _trained_stats(bt.build(spec, seed=1), spec, torch)
    x = torch.from_numpy(images(spec, 2, size=40))
    with torch.no_grad(), plain_math():
        ref = model(x)
    with torch.inference_mode():
        fast = model(x)
    # fp32 eval parity as for the cross-backend checks: 1e-5 of the largest logit.
    assert (fast - ref).abs().max() <= 1e-5 * ref.abs().max()
    # The folded weights follow a weight change made in place (no module call in between).
    with torch.no_grad():
        model.bn1.weight.mul_(3)
        with plain_math():
            ref2 = model(x)
        fast2 = model(x)
    assert (ref2 - ref).abs().max() > 1e-3 * ref.abs().max()
    assert (fast2 - ref2).abs().max() <= 1e-5 * ref2.abs().max()


def test_torch_training_math_is_unchanged(torch):
    import sknet.backends.torch as bt
    from sknet.backends.torch import probe
    from sknet.backends.torch.layers import plain_math

    spec = get_spec("sknet_small")
    x = images(spec, 8, size=28)
    y = torch.from_numpy(np.arange(8) % spec.num_classes)

    def grads(dtype, plain, choices=None):
        model = bt.build(spec, seed=2).to(dtype).train()
        if choices is not None:
            probe.pin(model, choices)
        with plain_math() if plain else contextlib.nullcontext():
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x).to(dtype)), y)
        loss.backward()
        return {k: p.grad for k, p in model.named_parameters()}

    def worst(a, b):
        return max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in a)

    # In float64 the rewritten selection (sigmoid, lerp, split means, in-place residual)
    # is the same function: differences are rounding only.
    assert worst(grads(torch.float64, False), grads(torch.float64, True)) < 1e-10
    # In fp32 both on the ReLU signs of the float64 pass: a ReLU input rounded across zero
    # moves a gradient entry by its whole size, which is not a math change (docs/parity.md,
    # finding 8). The fast path (NHWC, in-place residual) runs every ReLU through its
    # module, the blocks' residual ReLUs included, so replaying the signs covers all of them.
    reference = bt.build(spec, seed=2).to(torch.float64).train()
    with probe.record_choices(reference) as fast_choices:
        reference(torch.from_numpy(x).double())
    with plain_math(), probe.record_choices(reference) as choices:
        reference(torch.from_numpy(x).double())
    assert sorted(fast_choices) == sorted(choices) and "layer1.0.act" in choices
    assert worst(grads(torch.float32, False, choices), grads(torch.float32, True, choices)) < 1e-4


@pytest.mark.parametrize("size", [14, 15])
@pytest.mark.parametrize("groups", [1, 4])
def test_torch_strided_dilated_conv_runs_on_the_subsampled_grid(size, groups, torch):
    from sknet.backends.torch.layers import Conv2d, plain_math

    # Only convs whose taps all land on multiples of the stride take the subsampled path.
    assert Conv2d(8, 8, 3, stride=2, padding=2, dilation=2).subsample
    assert Conv2d(8, 8, 5, stride=3, padding=6, dilation=3).subsample
    assert not Conv2d(8, 8, 3, stride=2, padding=1, dilation=1).subsample
    assert not Conv2d(8, 8, 3, stride=2, padding=1, dilation=2).subsample
    assert not Conv2d(8, 8, 3, stride=1, padding=2, dilation=2).subsample
    torch.manual_seed(0)
    conv = Conv2d(8, 16, 3, stride=2, padding=2, dilation=2, groups=groups).double()
    x = torch.randn(2, 8, size, size + 1, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 16, (size + 1) // 2, (size + 2) // 2, dtype=torch.float64)

    def run(plain):
        x.grad = conv.weight.grad = None
        with plain_math() if plain else contextlib.nullcontext():
            y = conv(x)
        y.backward(g)
        return y.detach(), x.grad.clone(), conv.weight.grad.clone()

    # The same products summed in another order: float64 rounding apart (odd sizes included,
    # where the last row or column has no right-hand neighbour).
    for fast, plain in zip(run(False), run(True)):
        assert fast.shape == plain.shape
        assert (fast - plain).abs().max() <= 1e-12 * plain.abs().max()


def test_torch_record_gives_softmax_weights(torch):
    import sknet.backends.torch as bt
    from sknet.backends.torch.layers import plain_math

    spec = get_spec("sknet_small")
    model = bt.build(spec, seed=3).eval()
    unit = model.layer2[0].conv1
    x = torch.from_numpy(images(spec, 2, size=28))
    with torch.no_grad():
        unit.record = True
        with plain_math():
            model(x)
            ref_w, ref_b = unit.recorded
        model(x)
        w, b = unit.recorded
    assert tuple(w.shape) == tuple(ref_w.shape) == (2, 2, 64, 1, 1)
    assert torch.allclose(w, ref_w, atol=1e-6) and torch.allclose(w.sum(1), torch.ones(()), atol=1e-6)
    assert all(torch.allclose(p, q, atol=1e-5) for p, q in zip(b, ref_b))


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
