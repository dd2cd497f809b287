"""``fast.accelerate``: every PyTorch speed-up computes what the reference modules do.

No timings are asserted (the machine is shared); speed lives in benchmarks/throughput.py.
"""
import copy

import numpy as np
import pytest

from conftest import images
from sknet import get_spec
from test_benchmark_smoke import small


def _trained_stats(model, spec, torch):
    """Non-trivial BN running statistics, so that folding them is actually exercised."""
    model.train()
    with torch.no_grad():
        for seed in range(2):
            model(torch.from_numpy(images(spec, 4, seed=seed + 10, size=32)))
    return model.eval()


def _accelerated(model):
    from sknet.backends.torch.fast import accelerate

    return accelerate(copy.deepcopy(model))


@pytest.mark.parametrize("name", ["skresnet18", "skresnext50_32x4d", "mindcv_skresnet18"])
def test_torch_fast_inference_matches_reference(name, torch):
    import sknet.backends.torch as bt

    spec = small(name)
    model = _trained_stats(bt.build(spec, seed=1), spec, torch)
    fast_model = _accelerated(model).eval()
    x = torch.from_numpy(images(spec, 2, size=40))
    with torch.no_grad():
        ref = model(x)
    with torch.inference_mode():
        fast = fast_model(x)
    # fp32 eval parity as for the cross-backend checks: 1e-5 of the largest logit.
    assert (fast - ref).abs().max() <= 1e-5 * ref.abs().max()
    # The folded weights follow a weight change made in place (no module call in between).
    with torch.no_grad():
        fast_model(x)
        model.bn1.weight.mul_(3)
        fast_model.bn1.weight.mul_(3)
        ref2 = model(x)
        fast2 = fast_model(x)
    assert (ref2 - ref).abs().max() > 1e-3 * ref.abs().max()
    assert (fast2 - ref2).abs().max() <= 1e-5 * ref2.abs().max()


def test_accelerate_keeps_names_parameters_and_outputs_shape(torch):
    import sknet.backends.torch as bt
    from sknet.backends.torch.fast import FastSelectiveKernel, is_accelerated
    from sknet.backends.torch.layers import SelectiveKernel

    spec = get_spec("skresnet18")
    model = bt.build(spec, seed=1)
    before = {k: v.data_ptr() for k, v in model.state_dict().items()}
    fast = bt.accelerate(model)
    assert fast is model and is_accelerated(model)
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == before
    units = [m for m in model.modules() if isinstance(m, SelectiveKernel)]
    assert len(units) == 8 and all(isinstance(m, FastSelectiveKernel) for m in units)
    assert not is_accelerated(bt.build(spec)) and is_accelerated(bt.build(spec, fast=True))


def test_torch_training_math_is_unchanged(torch):
    import sknet.backends.torch as bt
    from sknet.backends.torch import probe

    spec = get_spec("sknet_small")
    x = images(spec, 8, size=28)
    y = torch.from_numpy(np.arange(8) % spec.num_classes)

    def grads(dtype, fast, choices=None):
        model = bt.build(spec, seed=2, fast=fast).to(dtype).train()
        if choices is not None:
            probe.pin(model, choices)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x).to(dtype)), y)
        loss.backward()
        return {k: p.grad for k, p in model.named_parameters()}

    def worst(a, b):
        return max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in a)

    # In float64 the rewritten selection (sigmoid, lerp, split means, in-place residual)
    # is the same function: differences are rounding only.
    assert worst(grads(torch.float64, True), grads(torch.float64, False)) < 1e-10
    # In fp32 both on the ReLU signs of the float64 pass: a ReLU input rounded across zero
    # moves a gradient entry by its whole size, which is not a math change (docs/parity.md,
    # finding 8). The fast path (NHWC, in-place residual) runs every ReLU through its
    # module, the blocks' residual ReLUs included, so replaying the signs covers all of them.
    reference = bt.build(spec, seed=2).to(torch.float64).train()
    with probe.record_choices(reference) as choices:
        reference(torch.from_numpy(x).double())
    fast_reference = bt.build(spec, seed=2, fast=True).to(torch.float64).train()
    with probe.record_choices(fast_reference) as fast_choices:
        fast_reference(torch.from_numpy(x).double())
    assert sorted(fast_choices) == sorted(choices) and "layer1.0.act" in choices
    assert worst(grads(torch.float32, True, choices), grads(torch.float32, False, choices)) < 1e-4


@pytest.mark.parametrize("size", [14, 15])
@pytest.mark.parametrize("groups", [1, 4])
def test_torch_strided_dilated_conv_runs_on_the_subsampled_grid(size, groups, torch):
    from torch import nn

    from sknet.backends.torch.fast import SubsampledConv2d

    # Only convs whose taps all land on multiples of the stride take the subsampled path.
    assert SubsampledConv2d.applies(nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2))
    assert SubsampledConv2d.applies(nn.Conv2d(8, 8, 5, stride=3, padding=6, dilation=3))
    assert not SubsampledConv2d.applies(nn.Conv2d(8, 8, 3, stride=2, padding=1, dilation=1))
    assert not SubsampledConv2d.applies(nn.Conv2d(8, 8, 3, stride=2, padding=1, dilation=2))
    assert not SubsampledConv2d.applies(nn.Conv2d(8, 8, 3, stride=1, padding=2, dilation=2))
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2, groups=groups, bias=False).double()
    sub = copy.deepcopy(conv)
    sub.__class__ = SubsampledConv2d
    x = torch.randn(2, 8, size, size + 1, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 16, (size + 1) // 2, (size + 2) // 2, dtype=torch.float64)

    def run(module):
        x.grad = None
        y = module(x)
        y.backward(g)
        return y.detach(), x.grad.clone(), module.weight.grad.clone()

    # The same products summed in another order: float64 rounding apart (odd sizes included,
    # where the last row or column has no right-hand neighbour).
    for fast, plain in zip(run(sub), run(conv)):
        assert fast.shape == plain.shape
        assert (fast - plain).abs().max() <= 1e-12 * plain.abs().max()


def test_torch_capture_gives_the_same_softmax_weights_fast_or_not(torch):
    import sknet.backends.torch as bt
    from sknet.backends.torch.attention import capture

    spec = get_spec("sknet_small")
    model = bt.build(spec, seed=3).eval()
    x = images(spec, 2, size=28)
    unit = "layer2.0.conv1"
    _, ref = capture(model, x, keep_branches={unit})
    _, got = capture(_accelerated(model).eval(), x, keep_branches={unit})
    w, ref_w = got[unit].weights, ref[unit].weights
    assert w.shape == ref_w.shape == (2, 2, 64)
    assert np.allclose(w, ref_w, atol=1e-6) and np.allclose(w.sum(1), 1, atol=1e-6)
    assert all(np.allclose(p, q, atol=1e-5) for p, q in zip(got[unit].branches, ref[unit].branches))


def test_torch_conv_leaves_out_taps_that_meet_only_padding(torch):
    from torch import nn

    from sknet.backends.torch.fast import LiveTapConv2d
    from sknet.taps import tap_plan

    torch.manual_seed(0)
    cropped = 0
    for size in (1, 2, 3, 5):
        for stride, padding, dilation in ((1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 2, 2), (1, 0, 1), (2, 3, 1)):
            conv = nn.Conv2d(4, 6, 3, stride, padding, dilation, bias=True).double()
            live = copy.deepcopy(conv)
            live.__class__ = LiveTapConv2d
            cropped += tap_plan((size, size + 1), (3, 3), (stride,) * 2, (padding,) * 2, (dilation,) * 2) is not None
            x = torch.randn(2, 4, size, size + 1, dtype=torch.float64, requires_grad=True)
            try:
                g = torch.randn_like(conv(x))
            except RuntimeError:      # no output at this size: nothing to compare
                continue

            def run(module):
                x.grad = None
                module.zero_grad()
                y = module(x)
                y.backward(g)
                return y.detach(), x.grad.clone(), module.weight.grad.clone(), module.bias.grad.clone()

            # The left-out taps' products are zeros: the sums differ by rounding only, and the
            # left-out weights get zero gradients, as they do from the whole conv.
            for fast, plain in zip(run(live), run(conv)):
                assert fast.shape == plain.shape
                assert (fast - plain).abs().max() <= 1e-12 * plain.abs().max()
    assert cropped >= 6
