"""Training in one process: resume after SIGKILL is bit-exact, the same recipe means the same
training on both backends, and a checkpoint of either backend validates on the other."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

# MindSpore convolutions take the AVX2 GEMM path of oneDNN (see sknet.backends.mindspore).
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

from sknet.recipe import load_recipe  # noqa: E402
from sknet.registry import RECIPE_DIR  # noqa: E402
from sknet.schedule import learning_rates  # noqa: E402
from sknet.training import FAULT_ENV, Options  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path(os.environ.get("SKNET_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
pytestmark = pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) not installed")


def tiny_recipe(folder, **changes):
    """The Fashion-MNIST recipe with batch 32 and in-process loading: a few cheap steps."""
    data = yaml.safe_load((RECIPE_DIR / "fashion_mnist_small.yaml").read_text())
    data.update(batch_size=32, eval_batch_size=100, epochs=1)
    data["data"]["num_workers"] = 0
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = Path(folder) / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", GLOG_v="3", PYTHONHASHSEED="0")
    e.pop(FAULT_ENV, None)
    return e


def train_cmd(recipe, backend, out, *extra):
    return [sys.executable, "-m", "sknet.train", "--config", recipe, "--backend", backend, "--out", str(out),
            "--quiet", *extra]


def digest(out, rank=0):
    return json.loads((Path(out) / "digests" / f"rank{rank}.json").read_text())


RESUME_ARGS = ("--subset", "160", "--val-subset", "100", "--ckpt-every", "2")


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """Uninterrupted one-epoch runs per backend (160 images / batch 32 = 5 steps), made once."""
    root = tmp_path_factory.mktemp("whole")
    # Augmentation on, so that a resume must also restore where each image's crop and flip come from.
    recipe = tiny_recipe(root, **{"data.crop": "pad", "data.padding": 2, "data.hflip": 0.5})
    made = {}

    def get(backend):
        if backend not in made:
            if backend == "mindspore":
                pytest.importorskip("mindspore")
            out = root / backend
            subprocess.run(train_cmd(recipe, backend, out, *RESUME_ARGS), check=True, env=env(), cwd=ROOT,
                           capture_output=True, timeout=300)
            made[backend] = out
        return recipe, made[backend]
    return get


@pytest.mark.parametrize("backend", ["torch", "mindspore"])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, backend, whole):
    # A checkpoint every 2 steps; killed after step 3 (one step past the checkpoint at 2, lost),
    # resumed from step 2 of epoch 0, run to the end of the epoch (step 5).
    recipe, reference = whole(backend)
    broken = tmp_path / "broken"
    killed = subprocess.run(train_cmd(recipe, backend, broken, *RESUME_ARGS), env=dict(env(), **{FAULT_ENV: "0:3"}),
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (broken / "digests").exists()
    resumed = subprocess.run(train_cmd(recipe, backend, broken, *RESUME_ARGS, "--resume", "auto"), env=env(),
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "at step 2" in resumed.stdout
    a, b = digest(reference), digest(broken)
    assert a["step"] == b["step"] == 5
    assert a["sha256"] == b["sha256"]
    # The resumed run's metrics hold the one finished epoch once.
    rows = [json.loads(line) for line in (broken / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]


def _run_in_process(backend, recipe, out, steps_record):
    from sknet.train import train

    def hook(step, model, optimizer):
        steps_record.append(snapshot(backend, model, optimizer))

    opts = Options(recipe=recipe, backend=backend, out=str(out), subset=96, val_subset=100, quiet=True)
    return train(opts, step_hook=hook)


def snapshot(backend, model, optimizer):
    """(fc.bias, its momentum buffer, the lr the optimizer holds or None, canonical weights)."""
    if backend == "torch":
        from sknet.backends.torch import to_canonical

        p = dict(model.named_parameters())["fc.bias"]
        buf = optimizer.state[p]["momentum_buffer"].numpy().copy()
        return p.detach().numpy().copy(), buf, optimizer.param_groups[0]["lr"], to_canonical(model)
    from sknet.backends.mindspore import to_canonical

    names = [q.name for q in optimizer.parameters]
    i = names.index("fc.bias")
    return (optimizer.parameters[i].asnumpy().copy(), optimizer.moments[i].asnumpy().copy(), None,
            to_canonical(model))


def applied_lrs(records, first_param):
    """lr each step applied to fc.bias, from SGD without Nesterov: p_t = p_{t-1} - lr_t * buf_t.

    fc.bias has no weight decay in this recipe, so buf_t holds only gradients; the
    least-squares lr over its 10 values is exact up to float32 rounding of p.
    """
    out, prev = [], first_param
    for p, buf, _, _ in records:
        dp = (prev - p).astype(np.float64)
        b = buf.astype(np.float64)
        out.append(float(dp @ b / (b @ b)))
        prev = p
    return np.array(out)


def test_same_recipe_same_training_on_both_backends(tmp_path):
    """Per-step lr as each optimizer applied it, and the weights after 3 steps, agree across backends."""
    pytest.importorskip("mindspore")
    from sknet import get_spec
    from sknet.params import init_state

    recipe_path = tiny_recipe(tmp_path, **{"optimizer.nesterov": False, "schedule.warmup_epochs": 0.5})
    recipe = load_recipe(recipe_path)
    expected = learning_rates(recipe, 3, 1)
    assert len(set(np.round(expected, 12))) == 3       # warm-up then cosine: every step differs
    start = init_state(get_spec("sknet_small"), recipe.seed)["fc.bias"]
    runs = {}
    for backend in ("torch", "mindspore"):
        records = []
        _run_in_process(backend, recipe_path, tmp_path / backend, records)
        assert len(records) == 3
        runs[backend] = records
        got = applied_lrs(records, start)
        # float32 p rounding: |error in dp| <= ulp(|p|) ~ 1e-8 here against dp ~ 1e-3.
        np.testing.assert_allclose(got, expected, rtol=2e-4, err_msg=backend)
    # What torch's param groups held is the schedule to the last bit (float64 end to end).
    assert [r[2] for r in runs["torch"]] == list(expected)
    # Same init, batches, lr, wd, momentum, label smoothing and BN momentum: after 3 steps the
    # two frameworks' updates differ only by float32 summation order (measured: 1.7e-5 of the
    # update's norm). Dropping the 0.1 label smoothing or the 5e-4 decay on one side moves it
    # by far more than the 1e-3 allowed.
    init = init_state(get_spec("sknet_small"), recipe.seed)
    wt, wm = runs["torch"][-1][3], runs["mindspore"][-1][3]
    num = sum(float(((wt[k] - wm[k]).astype(np.float64) ** 2).sum()) for k in wt)
    den = sum(float(((wt[k] - init[k]).astype(np.float64) ** 2).sum()) for k in wt)
    assert (num / den) ** 0.5 < 1e-3


def test_validate_either_checkpoint_on_either_backend(whole):
    """A torch checkpoint on MindSpore and a MindSpore checkpoint on torch give the same top-1."""
    from sknet.commands.validate import validate

    for backend, name in (("torch", "last.pth"), ("mindspore", "last.ckpt")):
        recipe, out = whole(backend)
        ckpt = out / name
        res = {b: validate(recipe, ckpt, b, subset=300) for b in ("torch", "mindspore")}
        assert res["torch"]["n"] == res["mindspore"]["n"] == 300
        assert res["torch"]["correct1"] == res["mindspore"]["correct1"], name
        # Same weights, float32 on both sides: the mean loss agrees to float32 rounding.
        assert abs(res["torch"]["loss"] - res["mindspore"]["loss"]) < 1e-4
        # Not a constant predictor: some images right, not all.
        assert 0 < res["torch"]["correct1"] < 300


def test_run_folder_contents(tmp_path, whole):
    """metrics.jsonl/csv, curves.png, last and best; a bad resume path is a one-line error."""
    recipe, out = whole("torch")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 5)]
    assert all(0 <= r["top1"] <= r["top5"] <= 100 for r in rows)
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,train_loss")
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import torch

    last = torch.load(out / "last.pth", weights_only=True)
    assert (last["epoch"], last["step"], last["recipe"]) == (1, 5, "tiny")
    assert set(last) >= {"model", "optimizer", "epoch", "step", "recipe", "rng"}
    # The optimizer follows the recipe's weight-decay rule, names recorded.
    groups = {g["weight_decay"]: g["param_names"] for g in last["optimizer"]["param_groups"]}
    assert "fc.weight" in groups[5e-4] and "fc.bias" in groups[0.0] and "bn1.weight" in groups[0.0]
    assert (out / "best.pth").is_file()
    bad = subprocess.run(train_cmd(recipe, "torch", tmp_path / "x", "--resume", str(tmp_path / "nope.pth")),
                         env=env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    # Bad input, found before training starts: exit 2 by the one rule of sknet.exits (was 1).
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].endswith("nope.pth: no such file")
    assert not list(tmp_path.glob("x/*.pth"))


@pytest.mark.parametrize("how", ["error", "sigterm"])
def test_failure_mid_run_is_status_1_naming_the_last_checkpoint(tmp_path, how):
    """An error raised or a SIGTERM received while training is a RunFailed (exit 1), not bad input."""
    import signal

    from sknet.errors import SKNetError
    from sknet.exits import exit_status
    from sknet.train import train
    from sknet.training import RunFailed

    def hook(step, model, optimizer):
        if step == 2:
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            raise SKNetError("disk went away")

    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "run"
    opts = Options(recipe=tiny_recipe(tmp_path), backend="torch", out=str(out), subset=96, val_subset=100,
                   ckpt_every=1, quiet=True)
    with pytest.raises(RunFailed) as info:
        train(opts, step_hook=hook)
    assert exit_status(info.value) == 1
    text = str(info.value)
    assert text.startswith("rank 0: ") and "\n" not in text
    assert ("SIGTERM" in text) == (how == "sigterm") and ("disk went away" in text) == (how == "error")
    assert text.endswith(f"last good checkpoint: {out / 'last.pth'} (step 1)")
    assert signal.getsignal(signal.SIGTERM) is before


def test_non_finite_loss_stops_at_once_keeping_the_last_good_checkpoint(tmp_path):
    """A run whose loss turns inf or NaN stops with exit 1 naming the step; the checkpoint stays finite."""
    import torch

    from sknet.exits import exit_status
    from sknet.train import train
    from sknet.training import RunFailed

    out = tmp_path / "run"
    # A finite but absurd lr: the first step's loss is finite, its update throws the weights out.
    recipe = tiny_recipe(tmp_path, **{"optimizer.lr": 1e30, "schedule.warmup_epochs": 0})
    opts = Options(recipe=recipe, backend="torch", out=str(out), subset=96, val_subset=100, ckpt_every=1,
                   quiet=True)
    with pytest.raises(RunFailed) as info:
        train(opts)
    text = str(info.value)
    assert exit_status(info.value) == 1 and "\n" not in text
    assert text.startswith("rank 0: the loss is ") and " at step 2 " in text
    assert text.endswith(f"last good checkpoint: {out / 'last.pth'} (step 1)")
    saved = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert saved["step"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
