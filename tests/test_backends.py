"""Both backends build every shipped spec into the same tree and compute the same logits."""
import numpy as np
import pytest

from conftest import ALL_MODELS, REFERENCE_PARAMS, images
from sknet import get_spec
from sknet.params import init_state, tensor_specs
from sknet.tree import count_params

# Small inputs keep the all-model sweep fast; the output shape does not depend on them.
SWEEP_SIZE = {"sknet_small": 28, "sknet29": 32}


def transfer(src_state, spec, ms_net):
    """The minimal cross-backend copy: canonical arrays from PyTorch into a MindSpore cell."""
    import sknet.backends.mindspore as bm

    bm.load_canonical(ms_net, src_state)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_builds_on_both_backends(name, torch, pynative):
    import sknet.backends.mindspore as bm
    import sknet.backends.torch as bt

    ms = pynative
    spec = get_spec(name)
    expected = REFERENCE_PARAMS.get(name, count_params(spec))
    model, net = bt.build(spec).eval(), bm.build(spec)
    net.set_train(False)
    assert bt.count_trainable(model) == bm.count_trainable(net) == expected
    # Same tree, names differing only by each framework's BN convention.
    kinds = {name: kind for name, _, kind, _ in tensor_specs(spec)}
    torch_names = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert [bm.ms_name(k, kinds[k]) for k in torch_names] == sorted(
        (p.name for p in net.get_parameters()), key=[bm.ms_name(k, kinds[k]) for k in torch_names].index)
    x = images(spec, batch=2, size=SWEEP_SIZE.get(name, 64))
    with torch.no_grad():
        assert tuple(model(torch.from_numpy(x)).shape) == (2, spec.num_classes)
    assert net(ms.Tensor(x)).shape == (2, spec.num_classes)


def test_initialisation_is_he_fan_out_and_identical_on_both(torch, pynative):
    import sknet.backends.mindspore as bm
    import sknet.backends.torch as bt

    spec = get_spec("skresnet18")
    state = init_state(spec, seed=3)
    w = state["layer3.0.conv2.conv.weight"]  # 256 out channels, 3x3: std sqrt(2 / (256 * 9))
    assert w.std() == pytest.approx(np.sqrt(2 / (256 * 9)), rel=0.01) and abs(w.mean()) < 1e-3
    assert np.all(state["layer1.0.conv1.attn.bn.weight"] == 1)
    t = bt.to_canonical(bt.build(spec, seed=3))
    m = bm.to_canonical(bm.build(spec, seed=3))
    assert all(np.array_equal(t[k], state[k]) and np.array_equal(m[k], state[k]) for k in state)
    assert not np.array_equal(init_state(spec, seed=4)["fc.weight"], state["fc.weight"])


@pytest.mark.parametrize("name, last", [("skresnet18", "conv2.bn"), ("skresnext50_32x4d", "conv3.bn")])
def test_residual_gamma_scales_only_each_blocks_last_bn(name, last):
    from sknet.tree import residual_norms

    spec = get_spec(name)
    blocks = [f"layer{s + 1}.{b}" for s, d in enumerate(spec.stages.depths) for b in range(d)]
    assert residual_norms(spec) == [f"{b}.{last}" for b in blocks]
    one, quarter = init_state(spec, seed=1), init_state(spec, seed=1, residual_gamma=0.25)
    changed = sorted(k for k in one if not np.array_equal(one[k], quarter[k]))
    assert changed == sorted(f"{b}.{last}.weight" for b in blocks)
    assert all(np.all(quarter[k] == np.float32(0.25)) for k in changed)


def test_bn_momentum_means_the_same(torch, pynative):
    import sknet.backends.mindspore as bm
    import sknet.backends.torch as bt

    spec = get_spec("sknet_small")
    # MindSpore's constructor takes the weight of the old statistic (0.9) and keeps
    # 1 - that internally, which is PyTorch's weight of the batch statistic.
    assert bt.build(spec).bn1.momentum == pytest.approx(0.1)
    assert bm.build(spec).bn1.momentum == pytest.approx(0.1)


def logits_both(name, mode_ms, torch, batch=2, size=None):
    import sknet.backends.mindspore as bm
    import sknet.backends.torch as bt

    spec = get_spec(name)
    model = bt.build(spec, seed=1).eval()
    net = bm.build(spec, seed=7)  # different init: the copy below must overwrite all of it
    transfer(bt.to_canonical(model), spec, net)
    net.set_train(False)
    x = images(spec, batch, size=size)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    return ref, net(mode_ms.Tensor(x)).asnumpy()


@pytest.mark.parametrize("name", ["sknet_small", "skresnet18", "skresnext50_32x4d"])
def test_same_weights_same_logits_pynative(name, torch, pynative):
    ref, out = logits_both(name, pynative, torch)
    # fp32 eval parity: relative to the largest logit (the README's parity section says why 1e-5).
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("name", ["skresnet18", "skresnext50_32x4d"])
def test_graph_mode_compiles_and_agrees(name, torch, graph):
    ref, out = logits_both(name, graph, torch, size=96)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_same_padded_pool_matches_mindspore(torch, pynative):
    # mindcv's stem pool pads bottom/right only; symmetric padding gives other logits.
    ref, out = logits_both("mindcv_skresnet18", pynative, torch, size=64)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    import sknet.backends.torch as bt
    spec = get_spec("mindcv_skresnet18")
    sym = bt.build(spec.derive(stem={"channels": 64, "kernel_size": 7, "stride": 2,
                                     "pool": {"kernel_size": 3, "stride": 2, "padding": "symmetric"}}), seed=1)
    with torch.no_grad():
        other = sym.eval()(torch.from_numpy(images(spec, 2, size=64))).numpy()
    assert np.abs(other - ref).max() > 1e-3 * np.abs(ref).max()


ENTRY_POINTS = r"""
import json, sys
import numpy as np
if sys.argv[1] == "ms-first":
    import mindspore  # the user's own import, before the backend's
import sknet
from sknet import get_spec
from sknet.params import init_state

spec = get_spec("sknet_small")
tensors = init_state(spec, 0)
net = sknet.create_model(spec, backend="mindspore")
import sknet.backends.mindspore as bm
from sknet.backends.mindspore import model, probe

built = {}
for mod in (model, probe):
    def record(net, options, inner=mod.accelerate):
        built[entry] = options
        return inner(net, options)
    mod.accelerate = record
entry = "create_model"
sknet.create_model(spec, backend="mindspore")
entry = "train"
from sknet.backends.mindspore import train
train.build(spec, seed=0)  # what the training adapter calls
entry = "validate"
from sknet.commands.validate import predictor
predictor("mindspore", spec, tensors, "cpu")
entry = "parity"
probe.build(spec, tensors)
entry = "export reference"
from sknet.backends.onnx.exporters import reference_logits
reference_logits("mindspore", spec, tensors, np.zeros((1, 1, 28, 28), np.float32))
print(json.dumps({"built": {k: list(vars(v).values()) for k, v in built.items()},
                  "resolved": list(vars(bm.resolve_options()).values()), "gemm": type(net.conv1).__name__,
                  "isa": __import__("os").environ.get("ONEDNN_MAX_CPU_ISA")}))
"""


@pytest.mark.parametrize("isa, order, gemm", [(None, "backend-first", False), ("AVX512_CORE", "backend-first", True),
                                              ("avx2", "ms-first", False), (None, "ms-first", True)])
def test_every_mindspore_entry_point_builds_with_the_same_options(isa, order, gemm, ms):
    """create_model, the trainer, validate, parity and the export check build the same cells in one process.

    oneDNN held to AVX2 (the backend's default, set on import unless MindSpore was imported
    first): MindSpore's own Conv2D op (through LiveTapConv2d); else the im2col convs. The other rewrites are always on.
    """
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    if isa is not None:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    proc = subprocess.run([sys.executable, "-c", ENTRY_POINTS, order], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out["built"]) == {"create_model", "train", "validate", "parity", "export reference"}
    assert all(v == out["resolved"] for v in out["built"].values()), out
    assert out["resolved"] == [gemm, True, True, True, True]
    assert out["gemm"] == ("GemmConv2d" if gemm else "LiveTapConv2d")
    # The backend's default only where MindSpore had not loaded (oneDNN reads it once).
    assert out["isa"] == (isa if isa is not None else ("AVX2" if order == "backend-first" else None))


def test_mindspore_create_model_fast_flag(pynative):
    import sknet
    from sknet.backends.mindspore import FastOptions, resolve_options

    assert sknet.create_model("sknet_small", "mindspore", fast=False).options == FastOptions.plain()
    resolved = resolve_options()
    assert sknet.create_model("sknet_small", "mindspore", fast=True).options == resolved
    assert sknet.create_model("sknet_small", "mindspore").options == resolved
    assert sknet.create_model("sknet_small", "onnx", fast=True).spec.name == "sknet_small"
