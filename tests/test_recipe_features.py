"""Recipe features (gradient accumulation and clipping, EMA of the weights, SyncBN, the AMP overflow
limit) mean the same training on both backends: same weights and EMA after a few steps."""
import math
import os

import numpy as np
import pytest

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

from sknet.training import Options  # noqa: E402
from sknet.training.ema import ema_decay  # noqa: E402
from test_train import FASHION, tiny_recipe  # noqa: E402

pytestmark = pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) not installed")


def test_ema_decay_follows_timm_and_mindcv():
    from sknet.recipe import EmaRecipe

    timm = EmaRecipe(enabled=True, decay=0.999, warmup="timm")
    # timm ModelEmaV3.get_decay(step): 0 at step 1, 1 - (1 + (step - 1)) ** -2/3 after, capped at decay.
    assert ema_decay(timm, 1) == 0.0
    assert ema_decay(timm, 9) == pytest.approx(1 - 9 ** (-2 / 3))
    assert ema_decay(timm, 10 ** 7) == 0.999
    mindcv = EmaRecipe(enabled=True, decay=0.9999, warmup="mindcv")
    assert ema_decay(mindcv, 2000) == pytest.approx(0.9999 * (1 - math.exp(-1)))
    assert ema_decay(EmaRecipe(decay=0.99), 1) == 0.99


def run(backend, recipe, out, subset=128, hook=None):
    from sknet.train import train

    seen = []

    def record(step, model, optimizer):
        seen.append(step)
        if hook is not None:
            hook(step, model, optimizer)
    train(Options(recipe=recipe, backend=backend, out=str(out), subset=subset, val_subset=100, quiet=True),
          step_hook=record)
    return seen


def canonical(path):
    from sknet import get_spec
    from sknet.convert import read_canonical

    return read_canonical(path, get_spec("sknet_small"))


def rel(a, b, ref):
    num = sum(float(((a[k] - b[k]).astype(np.float64) ** 2).sum()) for k in a)
    den = sum(float(((a[k] - ref[k]).astype(np.float64) ** 2).sum()) for k in a)
    return (num / den) ** 0.5


def last_row(out):
    import json

    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])


# Two steps of each, from the recipe as shipped (Nesterov momentum, weight decay, label smoothing),
# so that no feature hides another: with clipping binding, a gradient off by a constant factor
# (an accumulation that forgot to divide) would be clipped to the same update.
FEATURES = {
    "accumulation+ema+sync_bn": {"batch_size": 32, "grad": {"accumulation": 2},
                                 "ema": {"enabled": True, "decay": 0.9, "warmup": "timm"}, "sync_bn": True,
                                 "schedule.warmup_epochs": 0, "optimizer.base_batch": 64},
    "clipping": {"batch_size": 32, "grad": {"clip_norm": 0.5}, "schedule.warmup_epochs": 0,
                 "optimizer.base_batch": 32},
}


@pytest.mark.parametrize("feature", FEATURES)
def test_recipe_features_agree_across_backends(tmp_path, feature):
    """2 steps with 2 accumulated micro-batches of 16, EMA with timm's warm-up and SyncBN; or 2 steps
    clipped to norm 0.5: both backends give the same losses, weights and EMA weights (read back as
    ``sknet convert`` reads any checkpoint).

    Losses within 1e-4 (parity's steps.loss; measured 4e-7). Weights within 1e-3 of the update's norm,
    test_train's bound: unpinned (a training loop cannot replay parity's ReLU signs) the float32 floor
    of these 2 steps is PyTorch with oneDNN against PyTorch without it, 6.7e-5 and 2.3e-4 (accumulation,
    clipping), and PyTorch against MindSpore measured 2.9e-5 and 9.0e-6 (docs/training.md)."""
    pytest.importorskip("mindspore")
    import torch

    from sknet import get_spec
    from sknet.params import init_state

    recipe = tiny_recipe(tmp_path, **FEATURES[feature])
    clipped = []

    def grad_norm(step, model, optimizer):
        if isinstance(model, torch.nn.Module):   # torch's gradients after clip_grad_norm_, before the next step
            clipped.append(float(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters() if p.grad is not None]))))
    got = {}
    for backend, ext in (("torch", "pth"), ("mindspore", "ckpt")):
        out = tmp_path / backend
        # 128 images / (32 x 2 per step), or 64 / 32 without accumulation: 2 optimizer steps.
        assert run(backend, recipe, out, subset=128 if feature != "clipping" else 64, hook=grad_norm) == [1, 2]
        ema = out / f"last_ema.{ext}"
        got[backend] = (last_row(out), canonical(out / f"last.{ext}"), canonical(ema) if ema.exists() else None)
    init = init_state(get_spec("sknet_small"), 0)
    (rt, wt, et), (rm, wm, em) = got["torch"], got["mindspore"]
    for key in ("train_loss", "val_loss", "ema_val_loss"):
        if key in rt or key in rm:
            assert abs(rt[key] - rm[key]) <= 1e-4 * abs(rt[key]), (key, rt[key], rm[key])
    assert rel(wt, wm, init) < 1e-3
    if feature == "clipping":
        assert clipped == pytest.approx([0.5, 0.5], rel=1e-5)   # the clip bound at both steps
        assert et is None and em is None
        return
    assert min(clipped) > 0.5   # no clip_norm, no clipping: the norms (measured 1.41, 1.16) pass through
    assert rel(et, em, init) < 1e-3 and "ema_val_loss" in rt
    # The EMA is neither the weights nor the init: decay 0 then 1 - 2 ** -2/3 over the two updates.
    assert rel(et, wt, init) > 0.1


def test_amp_on_the_cpu_bf16_trains_and_an_overflow_run_stops(tmp_path):
    """torch CPU autocast: bf16 steps train (finite loss, float32 checkpoint); fp16 with a loss scale
    that overflows every step stops past amp.max_overflow_steps, naming the step, the checkpoint kept."""
    import torch

    from sknet.exits import exit_status
    from sknet.training import RunFailed

    bf16 = tiny_recipe(tmp_path, **{"amp": {"enabled": True, "dtype": "bf16"}})
    assert run("torch", bf16, tmp_path / "bf16", subset=64) == [1, 2]
    saved = torch.load(tmp_path / "bf16" / "last.pth", weights_only=True)["model"]
    assert saved["fc.weight"].dtype == torch.float32 and all(torch.isfinite(v).all() for v in saved.values())

    out = tmp_path / "fp16"
    fp16 = tiny_recipe(tmp_path, **{"amp": {"enabled": True, "dtype": "fp16", "loss_scale": 3.0e38,
                                            "max_overflow_steps": 1}})
    from sknet.train import train

    with pytest.raises(RunFailed) as info:
        train(Options(recipe=fp16, backend="torch", out=str(out), subset=128, val_subset=100, ckpt_every=1,
                      quiet=True, max_steps=2))
    text = str(info.value)
    assert exit_status(info.value) == 1 and "\n" not in text
    assert text.startswith("rank 0: 2 overflowing AMP steps in a row at step 2 ")
    # 3e38 x a loss of ~2.3 is inf in float32 at this scale and at GradScaler's halved one.
    assert text.endswith(f"last good checkpoint: {out / 'last.pth'} (step 1)")
