"""Recipes: loading and validation, the lr schedule against independent schedulers, weight decay."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from sknet import SpecError, get_spec
from sknet.params import tensor_specs
from sknet.errors import SKNetError
from sknet.recipe import Recipe, backend_device, list_recipes, load_recipe
from sknet.schedule import learning_rates, param_groups, peak_lr, weight_decay_of

RECIPES = Path(__file__).parent.parent / "configs/recipes"
FMNIST = yaml.safe_load((RECIPES / "fashion_mnist_small.yaml").read_text())


def test_every_shipped_recipe_loads_and_names_a_model():
    names = list_recipes()
    assert {"fashion_mnist_small", "sknet50_imagenet", "sknet101_imagenet",
            "mindcv_skresnet18", "mindcv_skresnext50_32x4d"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert isinstance(recipe, Recipe) and recipe.name == name
        assert recipe.model_spec().num_classes == (recipe.num_classes or get_spec(recipe.model).num_classes)


@pytest.mark.parametrize("name,model,wd,re_prob", [
    ("mindcv_skresnet18", "mindcv_skresnet18", 4e-5, 0.0),
    ("mindcv_skresnext50_32x4d", "mindcv_skresnext50_32x4d", 1e-4, 0.1),
])
def test_mindcv_recipes_match_its_published_configs(name, model, wd, re_prob):
    # Values of mindcv 0.3.0 configs/sknet/*_ascend.yaml (shared/reference/mindcv-sknet.md).
    r = load_recipe(name)
    assert r.model == model and r.batch_size == 64 and r.epochs == 200 and r.label_smoothing == 0.1
    assert peak_lr(r, world_size=8) == pytest.approx(0.1, rel=1e-15)
    o, s, d, a = r.optimizer, r.schedule, r.data, r.amp
    assert (o.momentum, o.nesterov, o.weight_decay, o.decay_norm_and_bias) == (0.9, False, wd, True)
    assert (s.kind, s.warmup_epochs, s.warmup_factor, s.min_lr, s.decay_epochs, s.per_step) == \
        ("cosine", 5, 0.0, 0.0, 195, True)
    assert (d.crop, d.interpolation, tuple(d.scale), tuple(d.ratio)) == \
        ("random_resized", "bicubic", (0.08, 1.0), (0.75, 1.333))
    assert (d.hflip, d.color_jitter, d.re_prob, d.size, d.crop_pct, d.drop_last) == \
        (0.5, 0.4, re_prob, 224, 0.875, True)
    assert (a.enabled, a.level, a.loss_scale) == (True, "O2", 1024)


@pytest.mark.parametrize("name,model", [("sknet50_imagenet", "skresnext50_32x4d"),
                                        ("sknet101_imagenet", "skresnext101_32x4d")])
def test_paper_recipe(name, model):
    r = load_recipe(name)
    assert r.model == model and r.epochs == 100 and r.optimizer.weight_decay == 1e-4
    assert r.optimizer.momentum == 0.9 and r.optimizer.base_batch == 256
    assert (r.schedule.kind, r.schedule.step_epochs, r.schedule.gamma) == ("step", 30, 0.1)
    lrs = learning_rates(r, steps_per_epoch=5, world_size=8)      # 8 x 32 = the paper's 256
    epoch_lr = lrs[::5]
    np.testing.assert_allclose(epoch_lr[[0, 29, 30, 59, 60, 89, 90, 99]],
                               [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-12)


def write_recipe(tmp_path, edit):
    data = json.loads(json.dumps(FMNIST))
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BAD = [
    ("unknown key", lambda d: d["optimizer"].update(lr_rate=0.1), "'optimizer.lr_rate': unknown key"),
    ("wrong type", lambda d: d.update(batch_size="128"), "'batch_size': expected int, got '128'"),
    ("bad literal", lambda d: d["schedule"].update(kind="linear"), "'schedule.kind': expected one of"),
    ("unknown model", lambda d: d.update(model="sknet999"), "'model': unknown model 'sknet999'"),
    ("zero lr", lambda d: d["optimizer"].update(lr=0), "'optimizer.lr': must be positive"),
    ("warmup too long", lambda d: d["schedule"].update(warmup_epochs=4), "'schedule.warmup_epochs': must be in [0, epochs=4)"),
    ("scale order", lambda d: d["data"].update(scale=[0.9, 0.1]), "'data.scale': must be [min, max]"),
    ("probability", lambda d: d["data"].update(hflip=1.5), "'data.hflip': must be a probability"),
    ("mean length", lambda d: d["data"].update(mean=[0.5, 0.5, 0.5]),
     "'data.mean': has 3 values for the 1 input channels of 'sknet_small'"),
    ("momentum", lambda d: d["optimizer"].update(momentum=1.0), "'optimizer.momentum': must be in [0, 1)"),
    ("smoothing", lambda d: d.update(label_smoothing=1), "'label_smoothing': must be in [0, 1)"),
    ("min_lr", lambda d: d["schedule"].update(min_lr=1.0), "'schedule.min_lr': must be in [0, optimizer.lr=0.1]"),
    ("loss scale", lambda d: d.update(amp={"loss_scale": 0.5}), "'amp.loss_scale': must be >= 1"),
    ("missing model", lambda d: d.pop("model"), "'model': required key is missing"),
    ("device", lambda d: d.update(device="tpu"), "'device': expected one of"),
    # Nothing silent: an infinite lr once trained to "done" with NaN weights.
    ("infinite lr", lambda d: d["optimizer"].update(lr=float("inf")), "'optimizer.lr': must be a finite number, got inf"),
    ("nan decay", lambda d: d["optimizer"].update(weight_decay=float("nan")),
     "'optimizer.weight_decay': must be a finite number, got nan"),
    ("int beyond float", lambda d: d["optimizer"].update(lr=10 ** 400), "'optimizer.lr': must be a finite number"),
    # Bounded before the lr table (one entry per step) or a batch is sized from them.
    ("huge epochs", lambda d: d.update(epochs=10 ** 9), "'epochs': must be at most 10000, got 1000000000"),
    ("huge batch", lambda d: d.update(batch_size=2 ** 31), "'batch_size': must be at most 65536"),
    ("huge seed", lambda d: d.update(seed=2 ** 40), "'seed': must be below 2**32, got 1099511627776"),
    ("huge image", lambda d: d["data"].update(size=10 ** 5), "'data.size': must be at most 4096"),
]


@pytest.mark.parametrize("label,edit,message", BAD, ids=[b[0] for b in BAD])
def test_bad_recipe_is_one_line_naming_file_and_key(tmp_path, label, edit, message):
    path = write_recipe(tmp_path, edit)
    with pytest.raises(SpecError) as err:
        load_recipe(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_unknown_recipe_name_lists_the_known_ones():
    with pytest.raises(SpecError, match="unknown recipe 'nope' \\(known: .*fashion_mnist_small"):
        load_recipe("nope")


def test_overrides_are_validated_again():
    r = load_recipe("fashion_mnist_small", {"epochs": 2, "data.root": "/tmp/x", "optimizer.lr": 0.2})
    assert (r.epochs, r.data.root, r.optimizer.lr, r.name) == (2, "/tmp/x", 0.2, "fashion_mnist_small")
    with pytest.raises(SpecError, match="'optimizer.lr': must be positive"):
        load_recipe("fashion_mnist_small", {"optimizer.lr": -1.0})
    with pytest.raises(SpecError, match="'optimizer.learning_rate': unknown override"):
        load_recipe("fashion_mnist_small", {"optimizer.learning_rate": 0.2})


# --- the schedule, step by step, against references that do not share our code ----------------

def closed_form(step, spe, peak, warmup, factor, decay, min_lr):
    """mindcv's warm-up + per-step cosine, written out as a scalar formula."""
    epoch = step / spe
    if epoch < warmup:
        return peak * factor + (peak - peak * factor) * epoch / warmup
    progress = min(epoch - warmup, decay) / decay
    return min_lr + (peak - min_lr) * (1 + math.cos(math.pi * progress)) / 2


@pytest.mark.parametrize("name,world,spe", [("mindcv_skresnet18", 8, 7), ("mindcv_skresnext50_32x4d", 2, 3),
                                             ("fashion_mnist_small", 2, 234)])
def test_cosine_schedule_matches_closed_form(name, world, spe):
    r = load_recipe(name)
    lrs = learning_rates(r, spe, world)
    assert lrs.dtype == np.float64 and lrs.shape == (r.epochs * spe,)
    peak = r.optimizer.lr * r.batch_size * world / r.optimizer.base_batch
    s = r.schedule
    decay = s.decay_epochs if s.decay_epochs is not None else r.epochs - s.warmup_epochs
    ref = [closed_form(i, spe, peak, s.warmup_epochs, s.warmup_factor, decay, s.min_lr) for i in range(len(lrs))]
    np.testing.assert_allclose(lrs, ref, rtol=1e-13, atol=1e-16)
    # Rises to (at most) the peak, then never rises again.
    top = int(np.argmax(lrs))
    assert lrs[top] <= peak and lrs[top] == pytest.approx(peak, rel=1e-5)
    assert np.all(np.diff(lrs[:top + 1]) > 0) and np.all(np.diff(lrs[top:]) <= 0)


def test_mindcv_schedule_matches_mindspore_schedules(ms):
    """MindSpore's own WarmUpLR and CosineDecayLR, evaluated at each global step (they compute in float32)."""
    r = load_recipe("mindcv_skresnet18")
    spe, world = 3, 8
    lrs = learning_rates(r, spe, world)
    warm_steps, decay_steps = 5 * spe, 195 * spe
    warmup = ms.nn.WarmUpLR(0.1, warm_steps)
    cosine = ms.nn.CosineDecayLR(0.0, 0.1, decay_steps)
    steps = list(range(0, 3 * warm_steps)) + list(range(3 * warm_steps, len(lrs), 5)) + [len(lrs) - 1]
    for i in steps:
        if i < warm_steps:
            ref = float(warmup(ms.Tensor(i, ms.int32)).asnumpy())
        else:
            ref = float(cosine(ms.Tensor(i - warm_steps, ms.int32)).asnumpy())
        # float32 cos of a float32 argument: errors are absolute, a few ulps of the peak lr.
        assert abs(lrs[i] - ref) <= 4 * np.finfo(np.float32).eps * 0.1, i


def test_per_epoch_cosine_matches_mindspore_cosine_decay_lr(ms):
    r = load_recipe("mindcv_skresnet18", {"schedule.warmup_epochs": 0, "schedule.decay_epochs": 150,
                                          "schedule.per_step": False, "schedule.min_lr": 0.001})
    spe = 4
    lrs = learning_rates(r, spe, world_size=8)
    ref = ms.nn.cosine_decay_lr(0.001, 0.1, total_step=200 * spe, step_per_epoch=spe, decay_epoch=150)
    np.testing.assert_allclose(lrs, ref, rtol=1e-13, atol=1e-16)


def record_torch_lrs(torch, make_schedulers, peak, total):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=peak)
    sched = make_schedulers(opt)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(out)


def test_step_schedule_matches_torch_steplr(torch):
    r = load_recipe("sknet50_imagenet", {"schedule.per_step": True})
    spe, world = 3, 4
    lrs = learning_rates(r, spe, world)
    peak = 0.1 * 32 * 4 / 256
    ref = record_torch_lrs(torch, lambda o: torch.optim.lr_scheduler.StepLR(o, 30 * spe, 0.1), peak, len(lrs))
    np.testing.assert_allclose(lrs, ref, rtol=1e-12)
    # Per-epoch and per-step are the same thing for a step schedule on epoch boundaries.
    np.testing.assert_array_equal(lrs, learning_rates(load_recipe("sknet50_imagenet"), spe, world))


def test_warmup_then_step_matches_torch_chained_schedulers(torch):
    r = load_recipe("sknet50_imagenet", {"schedule.warmup_epochs": 5, "schedule.warmup_factor": 0.1,
                                         "schedule.per_step": True, "epochs": 70})
    spe = 6
    lrs = learning_rates(r, spe, world_size=8)

    def make(o):
        lin = torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=5 * spe)
        step = torch.optim.lr_scheduler.StepLR(o, 30 * spe, 0.1)
        return torch.optim.lr_scheduler.ChainedScheduler([lin, step])

    ref = record_torch_lrs(torch, make, 0.1, len(lrs))
    np.testing.assert_allclose(lrs, ref, rtol=1e-12)


def test_warmup_then_cosine_matches_torch_sequential_schedulers(torch):
    r = load_recipe("fashion_mnist_small", {"schedule.warmup_epochs": 1.0, "schedule.min_lr": 0.001})
    spe, world = 50, 2
    lrs = learning_rates(r, spe, world)
    peak = 0.1 * 128 * 2 / 256
    warm, rest = spe, (r.epochs - 1) * spe

    def make(o):
        lin = torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=warm)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=rest, eta_min=0.001)
        return torch.optim.lr_scheduler.SequentialLR(o, [lin, cos], milestones=[warm])

    ref = record_torch_lrs(torch, make, peak, len(lrs))
    # torch's cosine is a recursion (each lr from the previous one): it drifts by a few ulps.
    np.testing.assert_allclose(lrs, ref, rtol=1e-9, atol=1e-15)


def test_linear_scaling_with_the_global_batch():
    r = load_recipe("fashion_mnist_small")
    one, four = learning_rates(r, 100, 1), learning_rates(r, 100, 4)
    np.testing.assert_allclose(four, one * 4, rtol=1e-14)
    assert one.max() == pytest.approx(0.1 * 128 / 256, rel=1e-12)
    unscaled = load_recipe("fashion_mnist_small", {"optimizer.base_batch": None})
    assert learning_rates(unscaled, 100, 4).max() == pytest.approx(0.1, rel=1e-12)


def test_shard_smaller_than_a_batch_is_a_clear_error():
    with pytest.raises(SpecError, match="'batch_size': gives 0 steps per epoch"):
        learning_rates(load_recipe("fashion_mnist_small"), 0, 2)


# --- weight decay: derived from the PyTorch module types, not from our names --------------------

@pytest.mark.parametrize("all_tensors", [False, True])
def test_weight_decay_targets_match_torch_module_types(torch, all_tensors):
    from sknet.backends.torch import build

    spec = get_spec("sknet_small")
    recipe = load_recipe("fashion_mnist_small", {"optimizer.decay_norm_and_bias": all_tensors})
    model = build(spec, seed=0)
    if all_tensors:
        expected = {n for n, _ in model.named_parameters()}
    else:
        expected = {f"{m}.weight" for m, mod in model.named_modules()
                    if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))}
    decayed = {n for n, _, kind, _ in tensor_specs(spec) if weight_decay_of(n, kind, recipe) > 0}
    assert decayed == expected
    assert all(weight_decay_of(n, k, recipe) in (0.0, 5e-4) for n, _, k, _ in tensor_specs(spec))
    # Groups keep model.parameters() order inside each group and cover every trainable tensor once.
    groups = param_groups(spec, recipe)
    order = [n for n, _ in model.named_parameters()]
    flat = [n for _, names in groups for n in names]
    assert sorted(flat) == sorted(order) and len(flat) == len(set(flat))
    for _, names in groups:
        assert names == [n for n in order if n in set(names)]
    assert not any(weight_decay_of(n, "bn", recipe) for n in ("layer1.0.bn.running_mean", "x.running_var"))


def test_device_names_per_backend():
    assert [backend_device(d, "torch") for d in ("auto", "cpu", "gpu", "CUDA")] == [None, "cpu", "cuda", "cuda"]
    assert [backend_device(d, "mindspore") for d in ("cpu", "GPU", "ascend")] == ["CPU", "GPU", "Ascend"]
    with pytest.raises(SKNetError, match="device 'ascend' is not available with backend 'torch'"):
        backend_device("ascend", "torch")
