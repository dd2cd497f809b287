"""benchmarks/train_e2e.py runs end to end, and what our side trains is the setting the peers get.

No timings are asserted (the machine is shared); the figures live in docs/performance.md.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_e2e  # noqa: E402

FASHION = Path(os.environ.get("SKNET_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) not installed")
def test_benchmark_runs_ours_and_reports_a_rate(tmp_path, torch):
    out = tmp_path / "e2e.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_e2e.py"), "--settings", "fmnist", "--impls",
           "sknet-torch", "--batch", "4", "--steps", "2", "--warmup", "1", "--threads", "1", "--workers", "0",
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["setting"], r["impl"]) for r in rows] == [("fmnist", "sknet-torch")]
    assert rows[0]["images_per_s"] > 0 and rows[0]["batch"] == 4 and rows[0]["steps"] == 2
    assert "| sknet-torch |" in proc.stdout and "torch" in rows[0]["versions"]
    # The folder it built is gone, and the run folder too (a temporary directory each).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e2e.json"]


@pytest.mark.parametrize("backend,model", [("torch", "skresnet18"), ("mindspore", "mindcv_skresnet18")])
def test_our_recipe_is_the_setting(tmp_path, backend, model):
    """224 px: the peers' crop, flip, jitter and optimizer; 28 px: no augmentation; the folder's classes."""
    from sknet.recipe import load_recipe

    for k, label in enumerate(["a", "b", "c"]):
        (tmp_path / "train" / label).mkdir(parents=True)
    args = train_e2e.parse_args(["--batch", "8", "--workers", "2"])
    for setting in ("imagenet", "fmnist"):
        path = tmp_path / f"{setting}.yaml"
        path.write_text(train_e2e.recipe_text(args, setting, tmp_path, backend))
        r = load_recipe(str(path))
        assert (r.model, r.num_classes, r.batch_size, r.data.num_workers) == (model, 3, 8, 2)
        assert r.model_spec().num_classes == 3
        assert (r.optimizer.lr, r.optimizer.momentum, r.optimizer.weight_decay, r.optimizer.nesterov) == \
            (train_e2e.LR, train_e2e.MOMENTUM, train_e2e.WEIGHT_DECAY, False)
        assert r.optimizer.base_batch is None and r.schedule.kind == "constant"
        assert r.label_smoothing == train_e2e.SMOOTHING and r.data.size == train_e2e.SETTINGS[setting]["size"]
        assert r.data.interpolation == "bicubic" and tuple(r.data.mean) == train_e2e.MEAN
        if setting == "imagenet":
            assert (r.data.crop, tuple(r.data.scale), r.data.hflip, r.data.color_jitter) == \
                ("random_resized", (0.08, 1.0), 0.5, 0.4)
        else:
            assert (r.data.crop, r.data.hflip, r.data.color_jitter) == ("none", 0.0, 0.0)


def test_window_times_the_steps_after_warmup():
    w = train_e2e.Window(warmup=2, steps=3)
    closed = [w.tick() for _ in range(5)]
    assert closed == [False, False, False, False, True]
    assert w.t0 is not None and w.seconds >= 0
