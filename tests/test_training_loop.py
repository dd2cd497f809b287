"""One training loop: both backends' adapters offer the same methods, and both training entry
points (``sknet train``, ``python -m sknet.train``) end an error with the same status and line."""
import inspect
import os
import subprocess
import sys

import pytest

import sknet.train
from sknet import cli
from sknet.errors import SKNetError, SpecError
from sknet.exits import exit_status
from sknet.training import RunFailed, TrainError

ADAPTER_METHODS = {"__init__", "build", "set_train", "step", "logits", "batches", "save", "load",
                   "canonical_state", "update_ema"}
WORLD_METHODS = {"__init__", "all_sum", "average_buffers", "close"}


def methods(cls):
    """{public method or __init__: its parameter names}."""
    return {name: list(inspect.signature(fn).parameters) for name, fn in vars(cls).items()
            if inspect.isfunction(fn) and (name == "__init__" or not name.startswith("_"))}


@pytest.fixture(scope="module")
def adapters():
    pytest.importorskip("torch")
    pytest.importorskip("mindspore")
    from sknet.backends.mindspore import train as ms_train
    from sknet.backends.torch import train as torch_train

    return {"torch": torch_train, "mindspore": ms_train}


@pytest.mark.parametrize("cls, expected", [("Adapter", ADAPTER_METHODS), ("World", WORLD_METHODS)])
def test_both_backends_adapters_have_the_same_methods(adapters, cls, expected):
    torch_side, ms_side = (methods(getattr(adapters[b], cls)) for b in ("torch", "mindspore"))
    assert torch_side == ms_side
    # Exactly what sknet.training.loop calls: nothing missing, nothing only one side offers.
    assert set(torch_side) == expected


def test_one_process_world_on_both_backends(adapters):
    # In a fresh process: MindSpore refuses set_device once another test has run a kernel.
    code = ("import sys, importlib; "
            "w = importlib.import_module(f'sknet.backends.{sys.argv[1]}.train').World('cpu', 'cpu'); "
            "print(w.rank, w.size, w.distributed, w.all_sum([1.0, 2])); w.close()")
    for backend in adapters:
        res = subprocess.run([sys.executable, "-c", code, backend], capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, GLOG_v="3"))
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout.split("\n")[-2] == "0 1 False [1.0, 2.0]", backend


def test_exit_status_rule():
    assert exit_status(SpecError("r.yaml", "epochs", "must be >= 1")) == 2
    assert exit_status(SKNetError("bad flag")) == 2
    assert exit_status(TrainError("--resume x.pth: no such file")) == 2      # before training starts
    assert exit_status(RunFailed("rank 0: stopped by SIGTERM at step 3")) == 1   # while running
    assert exit_status(KeyboardInterrupt()) == 130


def both_entry_points(argv, capsys):
    """[(status, stderr's last line without the program's name)] of ``sknet train`` and ``sknet.train``."""
    out = []
    for prog, main in (("sknet train", lambda: cli.main(["train", *argv])),
                       ("sknet.train", lambda: sknet.train.main(argv))):
        status = main()
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines and lines[-1].startswith(f"{prog}: "), lines
        out.append((status, lines[-1][len(prog) + 2:]))
    return out


@pytest.mark.parametrize("error, status", [
    (SpecError("tiny.yaml", "optimizer.lr", "must be > 0"), 2),
    (TrainError("--resume nope.pth: no such file"), 2),
    (RunFailed("rank 0: stopped at step 3: peer gone; last good checkpoint: runs/x/last.pth (step 2)"), 1),
    (KeyboardInterrupt(), 130),
])
def test_entry_points_share_the_exit_rule(monkeypatch, capsys, error, status):
    def fail(opts, step_hook=None):
        raise error
    monkeypatch.setattr(sknet.train, "train", fail)
    cli_side, module_side = both_entry_points(["--config", "fashion_mnist_small"], capsys)
    assert cli_side == module_side
    assert cli_side[0] == status
    expected = "interrupted" if status == 130 else f"error: {error}"
    assert cli_side[1] == expected


@pytest.mark.parametrize("argv, message", [
    (["--config", "no_such_recipe"], "error: unknown recipe 'no_such_recipe'"),
    (["--config", "fashion_mnist_small", "--set", "optimizer.lr"], "error: --set optimizer.lr: expected KEY=VALUE"),
    (["--config", "fashion_mnist_small", "--epochs", "0"], "error: --epochs must be >= 1, got 0"),
])
def test_bad_input_is_status_2_on_both_entry_points(capsys, argv, message):
    pytest.importorskip("torch")
    cli_side, module_side = both_entry_points(argv, capsys)
    assert cli_side == module_side
    assert cli_side[0] == 2 and cli_side[1].startswith(message)


def test_worker_rank_named_on_both_entry_points(monkeypatch, capsys):
    def fail(opts, step_hook=None):
        raise SKNetError("no full batch")
    monkeypatch.setattr(sknet.train, "train", fail)
    monkeypatch.setenv("RANK", "1")
    cli_side, module_side = both_entry_points(["--config", "fashion_mnist_small"], capsys)
    assert cli_side == module_side == (2, "error: rank 1: no full batch")


def test_uint8_batches_are_normalised_in_the_step_to_the_pipelines_values(adapters):
    """The loaders hand uint8 batches to the step; each backend's normalisation there gives
    ``normalize_batch``'s float32 values bit for bit (the same IEEE operations), so the batches
    the networks see are those of the float32 pipeline, on both backends and in both MindSpore modes."""
    import mindspore as ms
    import numpy as np
    import torch

    from sknet.data import normalize_batch

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (4, 3, 9, 7), dtype=np.uint8)
    x[0, :, 0, 0] = (0, 255, 128)
    mean, std = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])
    want = normalize_batch(x, mean, std)
    adapter = adapters["torch"].Adapter(adapters["torch"].World("cpu", "cpu"))
    adapter.mean, adapter.std = torch.from_numpy(mean).reshape(1, 3, 1, 1), torch.from_numpy(std).reshape(1, 3, 1, 1)
    adapter.scale = torch.tensor(1 / 255, dtype=torch.float32)
    np.testing.assert_array_equal(adapter._images(x).numpy(), want)
    np.testing.assert_array_equal(adapter._images(want).numpy(), want)   # float32 passes as it is
    normalize = adapters["mindspore"].Normalize(mean, std)
    mode = ms.get_context("mode")
    try:
        for m in (ms.PYNATIVE_MODE, ms.GRAPH_MODE):
            ms.set_context(mode=m)
            np.testing.assert_array_equal(normalize(ms.Tensor(x)).asnumpy(), want)
            np.testing.assert_array_equal(normalize(ms.Tensor(want)).asnumpy(), want)
    finally:
        ms.set_context(mode=mode)
    # Not a no-op: the values are the standardised ones.
    assert abs(float(want[0, 1, 0, 0]) - (1.0 - 0.456) / 0.224) < 1e-6
