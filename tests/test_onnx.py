"""The ONNX backend and exports: graphs that pass onnx.checker and compute PyTorch's and MindSpore's logits.

Numerics run in onnxruntime (fp32, CPU). The tolerance is the project's fp32 eval parity
bound, 1e-5 of the largest |logit|: PyTorch and MindSpore themselves differ by ~5e-7 on
these models, and every comparison below measured <= 1e-6 (docs/onnx.md). Inputs are
64 px, where every layer of both required models still has a spatial extent > 1.
"""
import json

import numpy as np
import pytest

from conftest import REFERENCE_PARAMS, images
from sknet import get_spec
from sknet.errors import CheckpointError, SKNetError
from sknet.params import init_state
from sknet.tree import Conv, Norm, count_macs, count_params, param_layers

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import sknet.backends.onnx as bo  # noqa: E402
from sknet.backends.onnx.exporters import export, verify  # noqa: E402

MODELS = ["skresnet18", "skresnext50_32x4d"]
SIZE = 64
TOL = 1e-5


def rel_err(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def trained_like(spec, seed=0):
    """Initial weights with BN statistics and affines away from identity, as after training,
    so that BN (and its folding) changes the numbers; an identity BN would hide a wrong fold."""
    state = init_state(spec, seed)
    rng = np.random.default_rng(seed + 100)
    for name, arr in state.items():
        suffix = name.rsplit(".", 1)[1]
        if name.startswith("fc."):
            continue
        if suffix == "running_mean":
            state[name] = rng.normal(0, 0.1, arr.shape).astype(np.float32)
        elif suffix == "running_var":
            state[name] = rng.uniform(0.5, 1.5, arr.shape).astype(np.float32)
        elif arr.ndim == 1 and suffix == "weight":
            state[name] = rng.uniform(0.8, 1.2, arr.shape).astype(np.float32)
        elif arr.ndim == 1 and suffix == "bias":
            state[name] = rng.normal(0, 0.05, arr.shape).astype(np.float32)
    state["fc.bias"] = rng.normal(0, 0.01, state["fc.bias"].shape).astype(np.float32)
    return state


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    """A model's weights, a fixed batch, and the logits PyTorch and MindSpore (PYNATIVE) give for it."""
    pytest.importorskip("torch")
    ms = pytest.importorskip("mindspore")
    from sknet.backends.onnx.exporters import reference_logits

    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    spec = get_spec(request.param)
    tensors = trained_like(spec)
    x = images(spec, batch=2, size=SIZE)
    refs = {b: reference_logits(b, spec, tensors, x) for b in ("torch", "mindspore")}
    # The frameworks' own agreement, for scale: the ONNX graph must be as close to each.
    assert rel_err(refs["mindspore"], refs["torch"]) <= TOL
    return spec, tensors, x, refs


@pytest.mark.parametrize("fuse_bn", [False, True], ids=["bn", "fused"])
def test_spec_graph_equals_torch_and_mindspore(case, fuse_bn):
    spec, tensors, x, refs = case
    model = bo.build_model(spec, tensors, fuse_bn=fuse_bn, opset=17, dynamic_batch=True)
    onnx.checker.check_model(model, full_check=True)
    out = bo.run(model, x)
    for backend, ref in refs.items():
        assert rel_err(out, ref) <= TOL, backend
    ops = [n.op_type for n in model.graph.node]
    tree = param_layers(spec)
    assert ops.count("Conv") == sum(isinstance(layer, Conv) for layer in tree)
    assert ops.count("BatchNormalization") == (0 if fuse_bn else sum(isinstance(layer, Norm) for layer in tree))
    # Nodes carry the tree's paths and weights their canonical names.
    inits = {t.name for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Conv":
            assert n.input[1] == f"{n.name}.weight" and n.input[1] in tensors
    if not fuse_bn:
        assert set(tensors) <= inits


def test_bn_folding_differs_from_the_bn_graph_by_rounding_only(case):
    spec, tensors, x, _ = case
    bn = bo.run(bo.build_model(spec, tensors), x)
    fused_model = bo.build_model(spec, tensors, fuse_bn=True)
    fused = bo.run(fused_model, x)
    assert rel_err(fused, bn) <= TOL
    # The fold really moved the BN into the weights: the conv weights changed.
    w = {t.name: onnx.numpy_helper.to_array(t) for t in fused_model.graph.initializer}
    assert not np.allclose(w["conv1.weight"], tensors["conv1.weight"])
    assert "conv1.bias" in w and "bn1.running_var" not in w


@pytest.mark.parametrize("via", ["torch", "mindspore"])
def test_framework_exports_pass_checker_and_match_their_framework(case, via):
    spec, tensors, x, refs = case
    # Each exporter runs once per model (both variants on both models would cost ~1 min
    # more): PyTorch's keeps BN on skresnet18 and folds it on SKNet-50, MindSpore's the opposite.
    fuse_bn = (spec.name == MODELS[0]) == (via == "mindspore")
    dynamic = via == "torch"  # MindSpore's exporter has no dynamic shapes
    model = export(spec, tensors, via=via, opset=17, fuse_bn=fuse_bn, dynamic_batch=dynamic, batch=2, size=SIZE)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert ("BatchNormalization" in {n.op_type for n in model.graph.node}) != fuse_bn
    assert rel_err(bo.run(model, x), refs[via]) <= TOL
    if dynamic:
        assert_batch_1_and_7(model, x, refs[via])
    # The exporter's graph computes the spec's MACs (shapes observed by onnxruntime where
    # static inference cannot follow the exporter's run-time split sizes).
    assert bo.graph_stats(model)["macs"] == count_macs(spec, SIZE)


def assert_batch_1_and_7(model, x, ref):
    """Eval-mode logits do not depend on the batch: each row must match the batch-2 reference."""
    rows = [0, 1, 0, 1, 1, 0, 1]
    assert rel_err(bo.run(model, x[:1]), ref[:1]) <= TOL
    out = bo.run(model, x[rows])
    assert out.shape == (7, ref.shape[1]) and rel_err(out, ref[rows]) <= TOL


def test_spec_graph_dynamic_batch_runs_at_1_and_7(case):
    spec, tensors, x, refs = case
    model = bo.build_model(spec, tensors, dynamic_batch=True, size=SIZE)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for ref in refs.values():
        assert_batch_1_and_7(model, x, ref)


def test_mindspore_export_refuses_dynamic_batch(ms):
    spec = get_spec("sknet_small")
    with pytest.raises(SKNetError, match="dynamic"):
        export(spec, init_state(spec), via="mindspore", dynamic_batch=True)


@pytest.mark.parametrize("name", MODELS)
def test_graph_counts_match_spec_and_reference(name):
    spec = get_spec(name)
    tensors = init_state(spec)
    for size in (SIZE, 224):
        stats = bo.graph_stats(bo.build_model(spec, tensors, dynamic_batch=False, size=size))
        assert stats["macs"] == count_macs(spec, size)
    assert stats["params"] == count_params(spec) == REFERENCE_PARAMS[name]
    # Folding turns each BN's 2C parameters into C conv biases.
    fused = bo.graph_stats(bo.build_model(spec, tensors, fuse_bn=True, dynamic_batch=False, size=224))
    bn_channels = sum(t.size for k, t in tensors.items() if k.endswith("running_var"))
    assert fused["params"] == stats["params"] - bn_channels
    assert fused["nodes"] == stats["nodes"] - stats["ops"]["BatchNormalization"]


def test_opsets_13_to_latest_compute_the_same(torch):
    spec = get_spec("sknet_small")
    tensors = trained_like(spec)
    x = images(spec, 2, size=28)
    base = bo.run(bo.build_model(spec, tensors, opset=17), x)
    import onnxruntime

    for opset in (13, 18, 21):
        model = bo.build_model(spec, tensors, fuse_bn=True, opset=opset)
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version == opset
        assert rel_err(bo.run(model, x), base) <= TOL, (opset, onnxruntime.__version__)
    with pytest.raises(SKNetError, match="opset 12"):
        bo.build_model(spec, tensors, opset=12)


def test_same_padded_pool_matches_torch(torch):
    # mindcv's stem pool pads bottom/right only (SAME_UPPER); symmetric padding differs by > 1e-3.
    from sknet.backends.onnx.exporters import reference_logits

    spec = get_spec("mindcv_skresnet18")
    tensors = trained_like(spec)
    x = images(spec, 2, size=SIZE)
    ref = reference_logits("torch", spec, tensors, x)
    assert rel_err(bo.run(bo.build_model(spec, tensors), x), ref) <= TOL


def test_comparison_catches_a_swapped_branch(torch):
    # A graph that wires the SK branches the wrong way round must fail the comparison.
    from sknet.backends.onnx.exporters import reference_logits

    spec = get_spec("skresnet18")
    tensors = trained_like(spec)
    x = images(spec, 2, size=SIZE)
    ref = reference_logits("torch", spec, tensors, x)
    swapped = dict(tensors)
    a, b = "layer2.0.conv1.paths.0.bn.running_mean", "layer2.0.conv1.paths.1.bn.running_mean"
    swapped[a], swapped[b] = tensors[b], tensors[a]
    assert rel_err(bo.run(bo.build_model(spec, swapped), x), ref) > 100 * TOL


def test_backend_entry_points(torch):
    import sknet

    model = sknet.create_model("skresnet18", backend="onnx", seed=2)
    assert isinstance(model, bo.OnnxModel)
    assert bo.count_trainable(model) == REFERENCE_PARAMS["skresnet18"]
    x = images(model.spec, 3, size=40)  # any batch and size: the wrapper's graph has both symbolic
    torch_model = sknet.create_model("skresnet18", backend="torch", seed=2).eval()
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(x)).numpy()
    assert rel_err(model(x), ref) <= TOL
    state = bo.to_canonical(model)
    state["fc.weight"] = state["fc.weight"][:, :-1]
    with pytest.raises(CheckpointError, match=r"fc.weight \(1000, 511\) vs \(1000, 512\)"):
        bo.load_canonical(model, state)
    del state["fc.weight"]
    with pytest.raises(CheckpointError, match="1 missing: fc.weight"):
        bo.build_model(model.spec, state)


def test_cli_export_from_checkpoint(tmp_path, torch, capsys):
    from sknet.cli import main
    import sknet.backends.torch as bt

    spec = get_spec("sknet_small")
    tensors = trained_like(spec, seed=5)
    ckpt = tmp_path / "small.pth"
    torch.save(bt.load_canonical(bt.build(spec), tensors).state_dict(), ckpt)
    out = tmp_path / "small.onnx"
    assert main(["export", "sknet_small", "--checkpoint", str(ckpt), "-o", str(out), "--fuse-bn",
                 "--dynamic-batch", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checked_batches"] == [1, 3] and set(report["max_rel_err"]) == {"torch", "mindspore"}
    assert all(e <= TOL for e in report["max_rel_err"].values())
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    x = images(spec, 5, size=spec.input.size)
    ref = bt.load_canonical(bt.build(spec), tensors).eval()(torch.from_numpy(x)).detach().numpy()
    assert rel_err(bo.run(model, x), ref) <= TOL
    assert report["macs"] == count_macs(spec) and report["nodes"] == len(model.graph.node)


def test_cli_export_failures_write_nothing(tmp_path, torch, capsys):
    from sknet.cli import main

    out = tmp_path / "m.onnx"
    # A tolerance nothing meets: the check fails and the file is not written.
    assert main(["export", "sknet_small", "-o", str(out), "--tol", "0"]) == 2
    assert "disagrees with torch" in capsys.readouterr().err
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main(["export", "sknet_small", "--checkpoint", str(bad), "-o", str(out)]) == 2
    assert "bad.pth" in capsys.readouterr().err
    assert main(["export", "sknet_small", "-o", str(tmp_path / "nowhere" / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", "sknet_small", "-o", str(out), "--opset", "12"]) == 2
    assert list(tmp_path.iterdir()) == [bad]


def test_info_reports_the_graphs_own_counts(capsys):
    from sknet.cli import main

    assert main(["info", "skresnet18", "--backend", "onnx", "--size", "96", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    g = info["onnx_graph"]
    # Counted by hand: an SK unit with 2 branches and split input is split + 2 x conv-bn-relu
    # + fuse add + attention (pool, conv, bn, relu, conv, reshape, softmax) + split + 2 x
    # (squeeze, mul) + add = 21 nodes; a basic block adds conv-bn, add, relu (25), 3 downsamples
    # 2 each; stem 4 (conv, bn, relu, pool), head 3 (pool, flatten, gemm): 8 x 25 + 6 + 4 + 3
    # = 213, less the 36 BN nodes when folded.
    assert (g["nodes"], g["nodes_fused_bn"]) == (213, 177)
    assert g["macs"] == info["macs"] == count_macs(get_spec("skresnet18"), 96)
    assert info["backend_params"] == g["params"] == REFERENCE_PARAMS["skresnet18"]


@pytest.mark.parametrize("branches", [[(3, 1)], [(3, 1), (5, 1), (3, 3)]], ids=["M1", "M3"])
def test_user_spec_with_other_branch_counts(branches, torch):
    # The graph is generated from the spec, not written for M = 2: one and three branches
    # (a 5x5 among them) give PyTorch's logits too, BN kept and folded.
    from sknet.backends.onnx.exporters import reference_logits

    spec = get_spec("sknet_small").derive(sk={
        "branches": [{"kernel_size": k, "dilation": d} for k, d in branches], "split_input": False,
        "rd_ratio": 0.125, "rd_divisor": 16})
    tensors = trained_like(spec, seed=3)
    x = images(spec, 3, size=28)
    ref = reference_logits("torch", spec, tensors, x)
    for fuse_bn in (False, True):
        assert rel_err(bo.run(bo.build_model(spec, tensors, fuse_bn=fuse_bn), x), ref) <= TOL
