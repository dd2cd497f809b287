"""timm's model API on both backends (issue 19): keywords, heads, backbone features, stochastic depth.

Feature maps are checked against maps saved from timm 1.0.31 itself
(tests/fixtures/make_timm_fixtures.py features) for sknet's seeded weights.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sknet
from sknet import SpecError, get_spec
from sknet.parity.checks import make_setup, run_checks
from sknet.parity.report import compare
from sknet.plan import build_plan
from sknet.tree import count_params

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from feature_weights import digest, feature_weights  # noqa: E402

MODELS = ("skresnet18", "skresnext50_32x4d")
EVAL_TOL = 1e-5


def timm_maps(name):
    ref = np.load(FIXTURES / f"timm_features_{name}.npz")
    state = feature_weights(name)
    # The same weights timm was given: the digest catches a change in sknet's seeded init.
    np.testing.assert_allclose(digest(state), ref["digest"], rtol=1e-6)
    return ref, state


@pytest.mark.parametrize("name", MODELS)
def test_features_equal_timm_on_both_backends(name, torch, pynative):
    ref, state = timm_maps(name)
    x = ref["x"]
    want = [ref[f"map{i}"] for i in range(len(ref["channels"]))]
    t = sknet.create_model(name, backend="torch", features_only=True, size=x.shape[-1])
    sknet.backend_module("torch").load_canonical(t, {k: state[k] for k in t.state_dict() if k in state})
    with torch.no_grad():
        got_t = [m.numpy() for m in t.eval()(torch.from_numpy(x))]
    m = sknet.create_model(name, backend="mindspore", features_only=True, size=x.shape[-1])
    sknet.backend_module("mindspore").load_canonical(m, {k: state[k] for k in t.state_dict() if k in state})
    got_m = [o.asnumpy() for o in m(pynative.Tensor(x))]
    info = t.feature_info
    assert info.out_indices == tuple(ref["out_indices"]) == m.feature_info.out_indices
    assert info.channels() == list(ref["channels"]) and info.reduction() == list(ref["reduction"])
    assert info.module_name() == list(ref["modules"]) == m.feature_info.module_name()
    for i, w in enumerate(want):
        assert got_t[i].shape == got_m[i].shape == w.shape
        assert compare(f"torch map {i}", w, got_t[i], EVAL_TOL).passed
        assert compare(f"mindspore map {i}", w, got_m[i], EVAL_TOL).passed
        assert compare(f"torch vs mindspore map {i}", got_t[i], got_m[i], EVAL_TOL).passed


@pytest.mark.parametrize("name", MODELS)
def test_drop_path_schedule_is_timms(name):
    ref = np.load(FIXTURES / f"timm_features_{name}.npz")
    plan = build_plan(get_spec(name).replace(drop_path_rate=0.2))
    np.testing.assert_allclose([b.drop_path for b in plan.blocks], ref["drop_path_rates"], rtol=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_droppath_parity_in_training_mode(name):
    spec = get_spec(name)
    results = {r.name: r for r in run_checks(make_setup(spec, batch=8, size=64), ("droppath",))}
    assert all(r.passed for r in results.values()), [(r.name, r.max_rel) for r in results.values()]
    dropped = results["droppath"].details["dropped"]
    assert dropped[0] == dropped[1] > 0  # something was dropped, the same on both sides


def test_drop_decisions_follow_the_seed(torch):
    """Stochastic depth is really applied: same seed, same output; another seed, another."""
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    outs = []
    for drop_seed in (0, 0, 1):
        model = sknet.create_model("skresnet18", backend="torch", drop_path_rate=0.5, num_classes=10)
        model.drop_source.__init__(drop_seed)
        with torch.no_grad():
            outs.append(model.train()(x).numpy())
    assert np.array_equal(outs[0], outs[1]) and not np.allclose(outs[0], outs[2])


def test_keywords_change_the_spec_and_counts(torch, ms):
    for kw, count in [({"in_chans": 1}, None), ({"num_classes": 0}, None),
                      ({"features_only": True, "out_indices": (0, 1)}, None)]:
        spec = get_spec("skresnet18").replace(**kw)
        count = count_params(spec)
        t = sknet.create_model("skresnet18", backend="torch", **kw)
        m = sknet.create_model("skresnet18", backend="mindspore", **kw)
        assert sknet.backend_module("torch").count_trainable(t) == count
        assert sknet.backend_module("mindspore").count_trainable(m) == count
    assert build_plan(get_spec("skresnet18").replace(in_chans=1)).stem.conv.in_ch == 1
    assert get_spec("skresnet18").replace(drop_rate=0.3).head.dropout == 0.3
    with pytest.raises(SpecError, match="'pretrained_cfg': unknown keyword \\(known: num_classes, in_chans"):
        sknet.create_model("skresnet18", pretrained_cfg={})
    with pytest.raises(SpecError, match="'features.out_indices': index 5 is out of range: 5 feature maps"):
        sknet.create_model("skresnet18", features_only=True, out_indices=(1, 5))
    with pytest.raises(SpecError, match="'features.out_indices': needs features_only"):
        get_spec("skresnet18").replace(out_indices=(1,))


def test_heads_on_both_backends(torch, pynative):
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    t = sknet.create_model("skresnet18", backend="torch", num_classes=0).eval()
    m = sknet.create_model("skresnet18", backend="mindspore", num_classes=0, fast=False)
    with torch.no_grad():
        pooled = t(torch.from_numpy(x)).numpy()
        assert np.array_equal(pooled, t.forward_head(t.forward_features(torch.from_numpy(x)), pre_logits=True).numpy())
    assert pooled.shape == (2, 512) and compare("pooled", pooled, m(pynative.Tensor(x)).asnumpy(), EVAL_TOL).passed
    for net in (t, m):
        net.reset_classifier(0, "")
    with torch.no_grad():
        maps = t(torch.from_numpy(x)).numpy()
    assert maps.shape == (2, 512, 2, 2) and compare("maps", maps, m(pynative.Tensor(x)).asnumpy(), EVAL_TOL).passed
    for net in (t, m):
        net.reset_classifier(7, "avg")
    with torch.no_grad():
        logits = t(torch.from_numpy(x)).numpy()
    assert logits.shape == (2, 7) and compare("logits", logits, m(pynative.Tensor(x)).asnumpy(), EVAL_TOL).passed
    assert sknet.backend_module("mindspore").to_canonical(m)["fc.weight"].shape == (7, 512)


def test_whole_checkpoint_loads_into_a_backbone(tmp_path, torch, capfd):
    full = sknet.create_model("skresnet18", backend="torch", num_classes=10, seed=3)
    path = tmp_path / "full.pth"
    torch.save(full.state_dict(), path)
    capfd.readouterr()
    backbone = sknet.create_model("skresnet18", backend="torch", features_only=True, out_indices=(2,),
                                  checkpoint=str(path))
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "96 tensors" in err[0] and "(backbone) and are ignored: layer3.0" in err[0], err
    assert torch.equal(backbone.layer2[0].conv1.paths[0].conv.weight, full.layer2[0].conv1.paths[0].conv.weight)
    assert not hasattr(backbone, "layer3")


def test_backbone_example_runs():
    proc = subprocess.run([sys.executable, str(Path(__file__).parent.parent / "examples" / "backbone.py"),
                           "--size", "32"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "layer4  (2, 512, 1, 1)" in proc.stdout and "logits (2, 10)" in proc.stdout
