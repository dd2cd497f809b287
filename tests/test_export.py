"""Deployment exports: every format written by `sknet export`, read back by its own loader,
equals the framework it came from; dynamic batch by default; bad input exits 2 writing nothing.

Tolerance 1e-5 of the largest |logit| (the project's fp32 parity bound, docs/export.md): the
TorchScript and torch.export files run PyTorch's own kernels (measured 0 difference), the
MindIR file MindSpore's; a wrong export (train-mode BN, lost weights) differs by > 1e-2.
"""
import json

import numpy as np
import pytest

from conftest import images
from sknet import get_spec
from sknet.cli import main
from sknet.params import init_state


def rel_err(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def _export(capsys, *argv):
    assert main(["export", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """sknet_small with seed-7 weights saved as a PyTorch state dict (any format would do)."""
    torch = pytest.importorskip("torch")
    import sknet.backends.torch as bt

    spec = get_spec("sknet_small")
    path = tmp_path_factory.mktemp("ckpt") / "small.pth"
    torch.save(bt.load_canonical(bt.build(spec), init_state(spec, 7)).state_dict(), path)
    return path


def torch_logits(spec, x, seed=7):
    import torch
    import sknet.backends.torch as bt

    model = bt.load_canonical(bt.build(spec), init_state(spec, seed)).eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("fmt", ["torchscript", "torch-export"])
def test_torch_formats_round_trip_at_two_batches(fmt, small_ckpt, tmp_path, capsys, torch):
    spec = get_spec("sknet_small")
    out = tmp_path / ("m.pt" if fmt == "torchscript" else "m.pt2")
    report = _export(capsys, "sknet_small", "--format", fmt, "--checkpoint", str(small_ckpt), "-o", str(out))
    assert report["dynamic_batch"] and report["checked_batches"] == [1, 3] and report["max_rel_err"] <= 1e-5
    # Loaded independently of the command, at a batch it did not check (5).
    loaded = torch.jit.load(str(out)) if fmt == "torchscript" else torch.export.load(str(out)).module()
    x = images(spec, 5)
    with torch.no_grad():
        got = loaded(torch.from_numpy(x)).numpy()
    assert got.shape == (5, spec.num_classes) and rel_err(got, torch_logits(spec, x)) <= 1e-5


def test_mindir_round_trip_with_dynamic_batch(tmp_path, capsys, ms):
    # skresnet18 at 64 px: its padded stem pool is the part MindSpore's dynamic MindIR needs rewritten.
    from mindspore import nn

    import sknet.backends.mindspore as bm

    spec = get_spec("skresnet18")
    out = tmp_path / "m.mindir"
    report = _export(capsys, "skresnet18", "-o", str(out), "--size", "64", "--seed", "3")
    assert report["format"] == "mindir" and report["dynamic_batch"] and report["max_rel_err"] <= 1e-5
    net = bm.load_canonical(bm.build(spec, fast=False), init_state(spec, 3))
    net.set_train(False)
    x = images(spec, 2, size=64)
    ref = net(ms.Tensor(x)).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        got = nn.GraphCell(ms.load(str(out)))(ms.Tensor(x)).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert rel_err(got, ref) <= 1e-5


def test_onnx_dynamic_batch_is_the_default(small_ckpt, tmp_path, capsys, torch):
    import sknet.backends.onnx as bo

    spec = get_spec("sknet_small")
    out = tmp_path / "m.onnx"
    report = _export(capsys, "sknet_small", "--checkpoint", str(small_ckpt), "-o", str(out))
    assert report["dynamic_batch"] and report["checked_batches"] == [1, 3]
    import onnx

    proto = onnx.load(str(out))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (2, 6):
        x = images(spec, batch)
        assert rel_err(bo.run(proto, x), torch_logits(spec, x)) <= 1e-5
    # A fixed batch on request; MindSpore's ONNX exporter cannot leave it free and says so.
    assert _export(capsys, "sknet_small", "-o", str(out), "--batch", "2")["input"][0] == 2
    assert main(["export", "sknet_small", "-o", str(out), "--via", "mindspore", "--dynamic-batch"]) == 2
    assert "no dynamic shapes" in capsys.readouterr().err


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_:
        main(["export", "sknet_small", "--format", "tflite"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err
    cases = [(["--checkpoint", str(bad), "-o", str(tmp_path / "m.pt")], "bad.pth"),
             (["--format", "torchscript", "-o", str(tmp_path / "m.onnx")], "the suffix says onnx"),
             (["-o", str(tmp_path / "m.pt"), "--opset", "13"], "ONNX options"),
             (["--format", "mindir", "-o", str(tmp_path / "m.bin")], "must end in .mindir")]
    for argv, message in cases:
        assert main(["export", "sknet_small", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert list(tmp_path.iterdir()) == [bad]


def test_torchscript_check_fails_on_a_tolerance_nothing_meets(tmp_path, capsys, torch):
    # A file differing from eager would be refused: with --tol below 0 even an exact one is.
    out = tmp_path / "m.pt"
    assert main(["export", "sknet_small", "-o", str(out), "--tol", "-1"]) == 2
    assert "disagrees with torch" in capsys.readouterr().err and not out.exists()
    assert list(tmp_path.iterdir()) == []
