"""Cross-backend parity: the same weights and inputs give the same numbers on PyTorch and MindSpore.

Batch 8 at 64 px: at batch 2 the SK attention's BN sees two values per channel, its
output is +-1 whatever the input, and fp32 gradients through it are cancellation
residues (PyTorch fp32 against fp64: 1.6e-2) -- no check of two fp32 frameworks could
pass or mean anything there. At 8 the same measure is 8e-6 (docs/parity.md).
"""
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from sknet import get_spec
from sknet.parity.checks import TOLERANCES, inputs, make_setup, run_checks
from sknet.params import tensor_specs
from sknet.parity.report import compare, compare_many, errors

BATCH, SIZE = 8, 64



def parity_json(*args):
    """``sknet parity ... --json`` in a process of its own: the CLI end to end, exit code included."""
    proc = subprocess.run([sys.executable, "-m", "sknet", "parity", *args, "--json"], capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    return proc.returncode, {c["name"]: c for c in report["checks"]}


def assert_json_pass(rc, checks):
    # Every row judged and passed, but the informative ones (each side on its own ReLU signs).
    bad = [f"{n}: {c['max_rel']} > {c['tol']:.0e} ({c.get('worst')})" for n, c in checks.items()
           if c["passed"] is not True and not (c["passed"] is None and n.endswith(".unpinned"))]
    assert rc == 0 and not bad, "; ".join(bad)


def by_name(results):
    return {r.name: r for r in results}


def assert_all_pass(results):
    bad = [f"{r.name}: {r.max_rel:.3e} > {r.tol:.0e} ({r.worst})" for r in results if r.passed is not True]
    assert not bad, "; ".join(bad)


def assert_four_checks(model):
    rc, r = parity_json(model, "--checks", "eval,train,grad,steps", "--batch", str(BATCH),
                        "--size", str(SIZE), "--mode", "pynative", "--steps", "10")
    assert_json_pass(rc, r)
    assert r["eval"]["tol"] == 1e-5 and r["grad"]["tol"] == 1e-4 and r["steps.weights"]["tol"] == 1e-4
    spec = get_spec(model)
    # Every trainable tensor's gradient, and every tensor after the steps, held to 1e-4.
    assert r["grad"]["details"]["tensors"] == sum(1 for *_, t in tensor_specs(spec) if t)
    assert r["steps.weights"]["details"]["tensors"] == len(tensor_specs(spec))
    # The steps really trained (lr > 0 after warm-up); the losses followed PyTorch fp64 too.
    assert max(r["steps.loss"]["details"]["lr"]) > 0
    assert r["steps.loss"]["details"]["fp32_vs_fp64"] < 1e-5
    # Each side on its own ReLU signs is reported, never judged (docs/parity.md, finding 8).
    assert r["grad.unpinned"]["passed"] is None
    return r


def test_four_checks_skresnet18_pynative():
    assert_four_checks("skresnet18")


def test_four_checks_skresnext50_pynative():
    r = assert_four_checks("skresnext50_32x4d")
    # PyTorch fp32 itself rounds some of SKNet-50's ~10^7 ReLU inputs to the other side of
    # zero; the pinned check is what makes its gradients comparable at all.
    assert r["grad"]["details"]["relu_inputs"] > 10**7


def test_eval_and_grad_skresnet18_graph():
    assert_json_pass(*parity_json("skresnet18", "--checks", "eval,grad", "--batch", str(BATCH),
                                  "--size", str(SIZE), "--mode", "graph"))


def test_eval_and_grad_skresnext50_graph():
    assert_json_pass(*parity_json("skresnext50_32x4d", "--checks", "eval,grad", "--batch", str(BATCH),
                                  "--size", str(SIZE), "--mode", "graph"))


def test_pinned_gradients_agree_across_two_pytorch_conv_implementations(torch):
    """A second implementation: PyTorch with and without oneDNN, both on the fp64 choices (ReLU signs, max-pool winners).

    Pinning must not change the function (the pinned forward is ReLU's up to rounding) and
    must make two float32 backward passes agree to the grad tolerance; the unpinned pair is
    only reported (one rounding flip of a ReLU input moves a gradient by ~1/sqrt(N)).
    """
    from sknet.backends.torch import probe

    spec = get_spec("skresnet18")
    setup = make_setup(spec, batch=BATCH, size=SIZE)
    x, y = inputs(spec, BATCH, SIZE, 0)
    with probe.math(False):
        t64 = probe.build(spec, setup.state, "float64")
        with probe.record_choices(t64) as choices:
            probe.grads(t64, x, y)
        relu, _ = probe.forward(probe.build(spec, setup.state), x, train=True)
        pinned, _ = probe.forward(probe.pin(probe.build(spec, setup.state), choices), x, train=True)
        assert compare("pinned forward", relu, pinned, 1e-6).passed
        _, a = probe.grads(probe.pin(probe.build(spec, setup.state), choices), x, y)
        with torch.backends.mkldnn.flags(enabled=False):
            _, b = probe.grads(probe.pin(probe.build(spec, setup.state), choices), x, y)
    result = compare_many("pinned, oneDNN on/off", a, b, TOLERANCES["grad"])
    assert result.passed, (result.max_rel, result.worst)
    assert result.details["tensors"] == len(a) == sum(1 for *_, t in tensor_specs(spec) if t)


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_mindspore_bn_running_var_is_unbiased_like_pytorch(mode, ms, torch):
    """The known trap, measured: both update running_var with the n/(n-1) batch variance."""
    from mindspore import nn

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    try:
        x = np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32) * 3 + 1
        bn = nn.BatchNorm2d(4, momentum=0.9)  # MindSpore's 0.9 = PyTorch's 0.1
        bn.set_train(True)
        y = bn(ms.Tensor(x)).asnumpy()
        n = x.shape[0] * x.shape[2] * x.shape[3]  # 18 values: biased and unbiased differ by 6 %
        biased = x.astype(np.float64).var(axis=(0, 2, 3))
        expected = 0.9 * 1.0 + 0.1 * biased * n / (n - 1)
        np.testing.assert_allclose(bn.moving_variance.asnumpy(), expected, rtol=1e-6)
        assert np.abs(bn.moving_variance.asnumpy() - (0.9 + 0.1 * biased)).max() > 1e-2
        # ...while the output is normalised with the biased variance, as PyTorch does.
        mean = x.astype(np.float64).mean(axis=(0, 2, 3), keepdims=True)
        ref = (x - mean) / np.sqrt(biased.reshape(1, -1, 1, 1) + 1e-5)
        np.testing.assert_allclose(y, ref, atol=1e-5)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


def test_errors_are_relative_to_the_largest_reference_value():
    ref = np.array([[1000.0, 1e-3], [-2000.0, 0.0]])
    out = ref + np.array([[0.0, 1e-3], [0.02, 0.0]])
    abs_err, rel_err = errors(ref, out)
    assert abs_err == pytest.approx(0.02) and rel_err == pytest.approx(1e-5)
    assert compare("x", ref, out, 1e-5).passed and not compare("x", ref, out, 9e-6).passed
    assert errors(np.zeros(3), np.zeros(3)) == (0.0, 0.0)
    assert errors(np.zeros(3), np.array([0, 1e-9, 0]))[1] == float("inf")
    assert errors(np.ones(2), np.array([1.0, np.nan]))[1] == float("inf")
    many = compare_many("m", {"a": np.ones(3), "b": np.full(3, 1e-6)},
                        {"a": np.ones(3), "b": np.full(3, 2e-6)}, 1e-4)
    # Each tensor on its own scale: a tiny tensor 100 % off fails although its absolute error is 1e-6.
    assert not many.passed and many.worst == "b" and many.details["failed"] == ["b"]


def run_cli(capsys, *argv):
    from sknet.cli import main

    code = main(["parity", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_json_passes_on_a_small_model(capsys, torch, pynative):
    # fp16: the forward half of the AMP policy that runs on this CPU (fp16 weights and activations on
    # both backends, within parity's 1e-2; training under AMP needs CUDA or Ascend).
    code, out, _ = run_cli(capsys, "sknet_small", "--json", "--checks", "eval,train,grad,fp16,onnx",
                           "--batch", "8", "--size", "16")
    report = json.loads(out)
    assert code == 0 and report["passed"] and report["failed"] == [] and report["steps_size"] == 16
    names = [c["name"] for c in report["checks"]]
    assert names == ["eval", "train", "train.bn_stats", "grad", "grad.unpinned", "fp16", "onnx"]
    fp16 = report["checks"][names.index("fp16")]
    # Each side's fp16 is ~1e-3 from fp32 (docs/parity.md): a side left in fp32 would show 0 here.
    assert fp16["details"]["torch_fp16_vs_fp32"] > 1e-5 and fp16["details"]["mindspore_fp16_vs_torch_fp32"] > 1e-5
    for c in report["checks"]:
        assert set(c) >= {"name", "max_abs", "max_rel", "tol", "passed"}
        if c["name"] != "grad.unpinned":
            assert c["passed"] is True and c["max_rel"] <= c["tol"]


def test_cli_reports_its_wall_time_and_peak_memory(capsys, torch, pynative):
    import time

    start = time.perf_counter()
    code, out, _ = run_cli(capsys, "sknet_small", "--json", "--checks", "eval,train", "--batch", "4", "--size", "16")
    outer = time.perf_counter() - start
    report = json.loads(out)
    cost = report["cost"]
    # Independent measures: the wall clock around the call, and this process's resident
    # memory now, which its high-water mark cannot be below.
    with open("/proc/self/status") as f:
        rss_now = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    per_check = [c["details"]["seconds"] for c in report["checks"] if "seconds" in c["details"]]
    assert code == 0 and len(per_check) == 2
    assert 0 < sum(per_check) <= cost["wall_s"] + 0.1 <= outer + 0.2
    assert cost["peak_rss_mib"] >= rss_now - 1 and cost["peak_rss_children_mib"] >= 0
    assert run_cli(capsys, "sknet_small", "--checks", "eval", "--batch", "4", "--size", "16")[1].splitlines()[-1] \
        .startswith("wall ")


def test_cli_rejects_an_unknown_check(capsys):
    code, out, err = run_cli(capsys, "sknet_small", "--checks", "eval,speed")
    assert code == 2 and out == "" and "unknown check 'speed'" in err and len(err.strip().splitlines()) == 1


def test_cli_rejects_a_tiny_steps_size(capsys):
    code, out, err = run_cli(capsys, "sknet_small", "--steps-size", "4")
    assert code == 2 and out == "" and "--steps-size" in err and len(err.strip().splitlines()) == 1


def test_steps_run_at_most_at_112_px_unless_asked():
    spec = get_spec("sknet_small")
    assert make_setup(spec, size=224).steps_pixels == 112 and make_setup(spec, size=64).steps_pixels == 64
    assert make_setup(spec, size=224, steps_size=224).steps_pixels == 224


def test_cli_rejects_a_non_finite_residual_gamma(capsys):
    code, out, err = run_cli(capsys, "sknet_small", "--residual-gamma", "nan")
    assert code == 2 and out == "" and "--residual-gamma" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("tensor, first", [
    # A branch conv of the second SK unit: its branch diverges first, not the stem or unit 1.
    ("layer2.0.conv1.paths.1.conv.weight", "layer2.0.conv1.paths.1"),
    # A plain conv after the SK unit: the unit agrees, the conv's own output does not.
    ("layer1.0.conv2.conv.weight", "layer1.0.conv2"),
    # The attention's BN: the branches agree, the selection weights do not.
    ("layer3.0.conv1.attn.bn.weight", "layer3.0.conv1.attn"),
])
def test_layers_names_the_corrupted_layer_first(tensor, first, tmp_path, capsys, torch, pynative):
    """MindSpore gets a checkpoint with one tensor 1 % off; --layers must point at it."""
    from sknet.convert import export

    spec = get_spec("sknet_small")
    state = make_setup(spec).state  # the seeded weights the PyTorch side builds
    bad = dict(state)
    bad[tensor] = state[tensor] * np.float32(1.01)
    export(spec, bad, str(tmp_path / "bad.ckpt"))
    code, out, _ = run_cli(capsys, "sknet_small", "--checks", "eval", "--layers", "--json", "--batch", "4",
                           "--mindspore-checkpoint", str(tmp_path / "bad.ckpt"))
    report = json.loads(out)
    layers = report["layers"]
    assert code == 1 and not report["passed"]
    assert layers["first_divergence"] == first and tensor in layers["suspects"]
    assert layers["differing_weights"] == [tensor]
    points = [p["name"] for p in layers["points"]]
    # Everything before the corrupted layer agrees within the eval tolerance.
    assert all(p["passed"] for p in layers["points"][:points.index(first)])
    assert points[0] == "stem" and points[-1] == "logits"


def test_torch_fast_inference_path_agrees_too(torch, pynative):
    """What users run for inference (BN folded, fused oneDNN calls, NHWC) against MindSpore."""
    setup = make_setup(get_spec("skresnet18"), batch=BATCH, size=SIZE, torch_fast=True)
    assert_all_pass(run_checks(setup, ["eval"]))


def test_float64_reference_convs_compute_pytorchs_conv(torch):
    """The float64 pass's grouped and dilated convs (unfold + matmul) against F.conv2d, values and gradients."""
    import torch.nn.functional as F

    from sknet.backends.torch.probe import Float64Conv2d

    gen = torch.Generator().manual_seed(0)
    for stride, dilation, groups in [(1, 1, 4), (1, 2, 4), (2, 2, 4), (2, 1, 2), (1, 2, 1)]:
        conv = torch.nn.Conv2d(8, 8, 3, stride, dilation, dilation, groups, bias=False).double()
        x = torch.randn(3, 8, 11, 9, dtype=torch.float64, generator=gen, requires_grad=True)
        assert Float64Conv2d.applies(conv)
        ref = F.conv2d(x, conv.weight, None, stride, dilation, dilation, groups)
        ref_grads = torch.autograd.grad((ref * ref.detach().cos()).sum(), (x, conv.weight))
        conv.__class__ = Float64Conv2d
        out = conv(x)
        grads = torch.autograd.grad((out * out.detach().cos()).sum(), (x, conv.weight))
        assert out.shape == ref.shape
        for a, b in [(ref.detach(), out.detach()), *zip(ref_grads, grads)]:
            assert float((a - b).abs().max() / a.abs().max()) < 1e-13, (stride, dilation, groups)
    assert not Float64Conv2d.applies(torch.nn.Conv2d(8, 8, 1))


def test_recorded_signs_are_one_bit_each():
    from sknet.parity.pinning import Signs

    x = np.random.default_rng(0).standard_normal((3, 5, 7))
    signs = Signs(x)
    assert signs.bits.nbytes == -(-x.size // 8) and signs.size == x.size
    np.testing.assert_array_equal(signs.unpack(np.float32), (x > 0).astype(np.float32))


def test_every_check_fails_on_a_broken_mindspore_side(torch, pynative, monkeypatch):
    """Each default check must be able to fail: one MindSpore conv weight off by noise of 1 % of its
    largest value (a pure scale would not do: a training-mode BN after it normalises a scale away),
    then its optimizer taking a 1 % larger learning rate, then its stem ReLU passing everything."""
    spec = get_spec("sknet_small")
    setup = make_setup(spec, batch=8, size=16, steps=3)
    name = "layer2.0.conv1.paths.1.conv.weight"
    w = setup.state[name]
    noise = np.random.default_rng(0).standard_normal(w.shape).astype(np.float32)
    bad = replace(setup, ms_state={**setup.state, name: w + np.float32(0.01) * np.abs(w).max() * noise})
    rows = by_name(run_checks(bad, ["eval", "train", "grad", "steps"]))
    assert [n for n, r in rows.items() if r.passed is not False] == ["grad.unpinned"]

    from sknet.backends.mindspore import probe as mp

    sgd = mp.sgd
    monkeypatch.setattr(mp, "sgd", lambda net, batches, lrs, *rest: sgd(net, batches, lrs * 1.01, *rest))
    steps = by_name(run_checks(setup, ["steps"]))
    assert steps["steps.weights"].passed is False
    monkeypatch.undo()

    from sknet.parity.pinning import Signs

    def identity_stem_relu(net, choices):  # every input of the stem's ReLU taken as positive
        return pin(net, {**choices, "act1": [Signs(np.ones(s.shape)) for s in choices["act1"]]})

    pin = mp.pin
    monkeypatch.setattr(mp, "pin", identity_stem_relu)
    rows = by_name(run_checks(setup, ["grad", "steps"]))
    assert rows["grad"].passed is False and rows["steps.weights"].passed is False


def test_recomputed_float64_pass_gives_the_same_gradients_and_choices(torch):
    """The grad check's float64 pass keeps one block's activations at a time (``probe.recomputed``):
    its gradients and recorded ReLU signs must be those of the plain pass."""
    from sknet.backends.torch import probe

    spec = get_spec("sknet_small")
    setup = make_setup(spec, batch=4, size=16)
    x, y = inputs(spec, 4, 16, 0)
    runs = []
    for low_memory in (False, True):
        model = probe.build(spec, setup.state, "float64")
        with probe.record_choices(model) as choices:
            if low_memory:
                with probe.recomputed(model):
                    runs.append((probe.grads(model, x, y)[1], choices))
            else:
                runs.append((probe.grads(model, x, y)[1], choices))
        assert "forward" not in vars(model.layer1[0])  # the blocks are themselves again
    (plain, plain_choices), (low, low_choices) = runs
    assert sorted(plain) == sorted(low) and all(np.array_equal(plain[k], low[k]) for k in plain)
    assert sorted(plain_choices) == sorted(low_choices)
    for path, calls in plain_choices.items():
        assert len(calls) == len(low_choices[path]) == 1
        if path != "maxpool":
            np.testing.assert_array_equal(calls[0].unpack(), low_choices[path][0].unpack())


def test_isolated_checks_give_the_in_process_rows():
    """Each check in a spawned process of its own (``sknet parity`` from 128 px, where MindSpore's
    kept memory pool would otherwise add up across checks): the same rows, number for number.
    Both runs in fresh processes, so both import MindSpore with the backend's oneDNN setting."""
    args = ("sknet_small", "--checks", "eval,grad", "--batch", "4", "--size", "16")
    rc_apart, apart = parity_json(*args, "--isolate", "on")
    rc_here, here = parity_json(*args, "--isolate", "off")
    assert rc_apart == rc_here == 0 and list(apart) == list(here) == ["eval", "grad", "grad.unpinned"]
    for name in here:
        assert (apart[name]["max_abs"], apart[name]["max_rel"]) == (here[name]["max_abs"], here[name]["max_rel"]), name
