"""SK attention analysis: capture on both backends, the enlargement, the CSV and the figures.

Models are skresnet18 at 64 px (8 SK units, two branches 3x3 and 3x3 dilation 2) with
random weights: the tests check the machinery, not what a trained network selects.
"""
import csv

import numpy as np
import pytest

from conftest import images
from sknet import get_spec
from sknet.attention import (analyse, branch_means, contribution_map, enlarge, label_from_name, large_small,
                             paper_name, unit_paths)
from sknet.cli import main
from sknet.errors import SKNetError

SIZE = 64


@pytest.fixture(scope="module")
def spec():
    return get_spec("skresnet18", size=SIZE)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two small 'photos': a labelled foolbox-style JPEG and an unlabelled PNG, textured, object centred."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for name, (w, h) in (("imagenet_00_243.jpg", (120, 96)), ("street.png", (96, 96))):
        yy, xx = np.mgrid[:h, :w]
        img = rng.integers(0, 256, (h, w, 3)).astype(np.float64) * 0.5
        disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(w, h) / 5) ** 2
        img[disc] = (230, 40, 20)
        Image.fromarray(img.astype(np.uint8)).save(folder / name)
        paths.append(folder / name)
    return paths


def torch_model(spec, seed=1):
    import sknet.backends.torch as bt

    return bt.build(spec, seed=seed).eval()


@pytest.fixture(scope="module")
def pair(spec, torch, ms):
    """A PyTorch model (seed 1) and a MindSpore network given its weights: built once, never modified."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    model = torch_model(spec)
    return model, ms_net_like(model)


def ms_net_like(model):
    """A MindSpore network holding the PyTorch model's weights (different init first, overwritten)."""
    import sknet.backends.mindspore as bm
    import sknet.backends.torch as bt

    net = bm.build(model.spec, seed=7)
    bm.load_canonical(net, bt.to_canonical(model))
    net.set_train(False)
    return net


# ---------------------------------------------------------------- images

def test_enlarge_crops_the_centre_and_resizes_back(spec):
    from PIL import Image

    # A dark 40 px square centred on a white 300 x 200 image. At scale 1 the crop is the
    # centre crop_pct of the shorter side (175 px) resized to 64 px; at scale s it is 175/s px.
    img = np.full((200, 300, 3), 255, np.uint8)
    img[80:120, 130:170] = 0
    img = Image.fromarray(img)
    for scale in (1.0, 1.5, 2.0):
        px = enlarge(img, spec, scale)
        assert px.shape == (SIZE, SIZE, 3) and px.dtype == np.uint8
        dark = np.flatnonzero(px[SIZE // 2, :, 0] < 128)
        expected = 40 * SIZE / (200 * spec.input.crop_pct / scale)
        assert abs(len(dark) - expected) <= 1, (scale, len(dark), expected)
        assert abs((dark[0] + dark[-1] + 1) / 2 - SIZE / 2) <= 0.5  # still centred
        assert np.all(dark == np.arange(dark[0], dark[-1] + 1))     # one run
    with pytest.raises(SKNetError, match="scale 0.5"):
        enlarge(img, spec, 0.5)


def test_class_from_foolbox_file_names():
    assert label_from_name("x/imagenet_00_243.jpg") == 243
    assert label_from_name("cifar10_03_0.png", num_classes=10) == 0
    assert label_from_name("imagenet_01_1243.jpg", num_classes=1000) is None
    assert label_from_name("holiday_2023.jpg") is None and label_from_name("dog.jpg") is None


def test_unit_names_follow_the_tree_and_the_paper(spec):
    assert unit_paths(spec) == [f"layer{s}.{b}.conv1" for s in (1, 2, 3, 4) for b in (0, 1)]
    assert paper_name("layer2.3.conv1") == "SK_3_4" and paper_name("layer1.2.conv2") == "SK_2_3"
    assert large_small(spec) == (1, 0)  # 3x3 dilation 2 sees 5x5 pixels, the 3x3 one 3x3
    assert unit_paths(get_spec("skresnext50_32x4d"))[:4] == [
        "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2", "layer2.0.conv2"]


def test_statistics_by_hand():
    # One image, 2 branches, 2 channels, 1 pixel: a = [[.2, .6], [.8, .4]], V0 = [1, 3], V1 = [2, 5].
    w = np.array([[[0.2, 0.6], [0.8, 0.4]]])
    v = [np.array([1.0, 3.0]).reshape(1, 2, 1, 1), np.array([2.0, 5.0]).reshape(1, 2, 1, 1)]
    np.testing.assert_allclose(branch_means(w), [[0.4, 0.6]])
    # large (1) minus small (0): mean(.8*2, .4*5) - mean(.2*1, .6*3) = 1.8 - 1.0
    np.testing.assert_allclose(contribution_map(w, v, 1, 0), [[[0.8]]])


# ---------------------------------------------------------------- capture

def _reference_weights(state, path, branches, eps):
    """The SK selection recomputed in float64 NumPy from the recorded branch outputs."""
    s = sum(b.astype(np.float64) for b in branches).mean(axis=(2, 3))                # (B, C)
    z = s @ state[f"{path}.attn.fc_reduce.weight"][:, :, 0, 0].T
    bn = {k: state[f"{path}.attn.bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var")}
    z = np.maximum((z - bn["running_mean"]) / np.sqrt(bn["running_var"] + eps) * bn["weight"] + bn["bias"], 0)
    logits = (z @ state[f"{path}.attn.fc_select.weight"][:, :, 0, 0].T).reshape(len(s), len(branches), -1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_torch_capture_is_the_units_own_selection(spec, torch):
    import sknet.backends.torch as bt
    from sknet.backends.torch.attention import capture, sk_cells

    model = torch_model(spec)
    state = bt.to_canonical(model)
    # BN statistics that are not the identity, so the eval-mode BN in the attention matters.
    rng = np.random.default_rng(5)
    for k in state:
        if ".attn.bn." in k:
            state[k] = (rng.uniform(0.5, 1.5, state[k].shape) if k.endswith(("var", "weight"))
                        else rng.normal(0, 0.2, state[k].shape)).astype(np.float32)
    bt.load_canonical(model, state)
    outputs = {}
    for path, cell in sk_cells(model).items():
        cell.register_forward_hook(lambda m, i, o, path=path: outputs.__setitem__(path, o.numpy().copy()))
    x = images(spec, batch=2, size=SIZE)
    _, rec = capture(model, x, keep_branches=set(unit_paths(spec)))
    assert list(rec) == unit_paths(spec)
    for path, (w, branches) in rec.items():
        assert w.shape == (2, 2, state[f"{path}.attn.fc_select.weight"].shape[0] // 2)
        # float32 network vs float64 reference on softmax weights near 0.5: 1e-6 is ~10 ulp.
        np.testing.assert_allclose(w, _reference_weights(state, path, branches, spec.norm.eps), rtol=0, atol=1e-6)
        # The unit's output is the recorded weights applied to the recorded branches.
        out = branches[0] * w[:, 0, :, None, None] + branches[1] * w[:, 1, :, None, None]
        np.testing.assert_allclose(out, outputs[path], rtol=1e-6, atol=1e-6)


def test_logits_bit_exact_with_and_without_capture(spec, pair, torch, pynative):
    from sknet.backends.mindspore.attention import capture as ms_capture
    from sknet.backends.mindspore.attention import sk_cells as ms_cells
    from sknet.backends.torch.attention import capture, sk_cells

    model, net = pair
    x = images(spec, batch=2, size=SIZE, seed=3)
    with torch.no_grad():
        plain = model(torch.from_numpy(x)).numpy()
    logits, _ = capture(model, x, keep_branches=set(unit_paths(spec)))
    assert np.array_equal(plain, logits)
    plain_ms = net(pynative.Tensor(x)).asnumpy()
    logits_ms, _ = ms_capture(net, x, keep_branches=set(unit_paths(spec)))
    assert np.array_equal(plain_ms, logits_ms)
    # Capture leaves no hook behind and holds on to nothing (the cells have no recording state).
    assert not any(m._forward_hooks for unit in sk_cells(model).values() for m in (unit.attn, *unit.paths))
    assert not any(c._forward_hook for unit in ms_cells(net).values() for c in (unit.attn, *unit.paths))
    with torch.no_grad():
        assert np.array_equal(model(torch.from_numpy(x)).numpy(), plain)


def test_mindspore_capture_from_graph_mode_runs_pynative_and_restores(spec, pair, graph):
    from sknet.backends.mindspore.attention import capture

    _, net = pair
    _, rec = capture(net, images(spec, batch=1, size=SIZE))
    assert len(rec) == 8 and all(r.weights.shape[:2] == (1, 2) for r in rec.values())
    assert graph.get_context("mode") == graph.GRAPH_MODE


def test_attention_equal_across_backends(spec, pair, photos, pynative):
    from sknet.backends.mindspore.attention import capture as ms_capture
    from sknet.backends.torch.attention import capture

    model, net = pair
    units = unit_paths(spec)
    a = analyse(model, capture, spec, photos, (1.0, 1.5), map_units=units)
    b = analyse(net, ms_capture, spec, photos, (1.0, 1.5), map_units=units)
    # The parity tolerance (1e-5 relative to the largest value): weights are <= 1.
    assert a.means.shape == (2, 2, 8, 2)
    assert np.abs(a.means - b.means).max() <= 1e-5 * np.abs(a.means).max()
    assert np.abs(a.diffs - b.diffs).max() <= 1e-5 * np.abs(a.means).max()
    for u in units:
        assert np.abs(a.maps[u] - b.maps[u]).max() <= 1e-5 * np.abs(a.maps[u]).max()
    assert np.array_equal(a.preds, b.preds)
    # The per-channel panel: the large branch's weights of the last unit of stage 2 (128 channels).
    assert a.channel_unit == "layer2.1.conv1" and a.channel_weights.shape == (2, 2, 128)
    assert np.abs(a.channel_weights - b.channel_weights).max() <= 1e-5
    np.testing.assert_allclose(a.channel_weights.mean(axis=2), a.means[:, :, units.index(a.channel_unit), 1],
                               rtol=0, atol=1e-6)
    # Not vacuous: the two scales and the units do differ from each other.
    assert np.abs(a.diffs[:, 1] - a.diffs[:, 0]).max() > 1e-4
    assert a.diffs.std() > 1e-3


# ---------------------------------------------------------------- the command

def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_cli(args, capsys):
    code = main(["attention"] + [str(a) for a in args])
    return code, capsys.readouterr()


@pytest.fixture(scope="module")
def cli_runs(photos, tmp_path_factory):
    """The command on both backends, same random weights (seed 0), two images x two scales."""
    out = {}
    for backend in ("torch", "mindspore"):
        pytest.importorskip(backend)
        folder = tmp_path_factory.mktemp(f"attn_{backend}")
        code = main(["attention", "--model", "skresnet18", "--backend", backend, "--size", str(SIZE),
                     "--images", *map(str, photos), "--scales", "1.0,1.5", "-o", str(folder)])
        assert code == 0
        out[backend] = folder
    return out


def test_cli_csv_has_one_row_per_image_scale_unit(cli_runs, spec):
    rows = read_csv(cli_runs["torch"] / "attention.csv")
    assert list(rows[0]) == ["image", "class", "scale", "unit", "paper_unit", "attn_3x3_d1", "attn_3x3_d2",
                             "diff", "pred"]
    keys = [(r["image"], r["scale"], r["unit"]) for r in rows]
    assert len(rows) == 2 * 2 * 8 and len(set(keys)) == len(keys)
    assert set(keys) == {(i, s, u) for i in ("imagenet_00_243.jpg", "street.png") for s in ("1", "1.5")
                         for u in unit_paths(spec)}
    assert {r["class"] for r in rows if r["image"] == "street.png"} == {""}
    assert {r["class"] for r in rows if r["image"] != "street.png"} == {"243"}
    for r in rows:
        small, large = float(r["attn_3x3_d1"]), float(r["attn_3x3_d2"])
        assert small + large == pytest.approx(1, abs=1e-6)  # a softmax over two branches
        assert float(r["diff"]) == pytest.approx(large - small, abs=1e-8)


def test_cli_same_numbers_on_both_backends(cli_runs):
    t, m = (read_csv(cli_runs[b] / "attention.csv") for b in ("torch", "mindspore"))
    assert [(r["image"], r["scale"], r["unit"], r["pred"]) for r in t] == [
        (r["image"], r["scale"], r["unit"], r["pred"]) for r in m]
    for col in ("attn_3x3_d1", "attn_3x3_d2", "diff"):
        a, b = (np.array([float(r[col]) for r in rows]) for rows in (t, m))
        assert np.abs(a - b).max() <= 1e-5


def test_cli_pngs_are_written_and_decode(cli_runs):
    from PIL import Image

    for folder in cli_runs.values():
        pngs = [folder / "difference.png", folder / "maps" / "imagenet_00_243.png", folder / "maps" / "street.png"]
        assert sorted(p.name for p in folder.rglob("*.png")) == sorted(p.name for p in pngs)
        for p in pngs:
            assert p.stat().st_size > 5000
            with Image.open(p) as img:
                assert img.format == "PNG" and min(img.size) >= 200
                px = np.asarray(img.convert("L"))
            assert px.std() > 10  # drawn on, not blank
        assert not list(folder.rglob("*.tmp"))


def test_cli_warns_without_checkpoint(photos, tmp_path, capsys):
    pytest.importorskip("torch")
    code, out = run_cli(["--model", "sknet_small", "--images", photos[1], "--scales", "1", "-o", tmp_path / "o"],
                        capsys)
    assert code == 0
    assert "no --checkpoint" in out.err and "mean nothing" in out.err
    assert len(read_csv(tmp_path / "o" / "attention.csv")) == 3  # sknet_small: 3 SK units, grayscale


@pytest.mark.parametrize("args, message", [
    (["--scales", "1,0.5"], "--scales '1,0.5'"),
    (["--scales", "1,x"], "--scales '1,x'"),
    (["--map-units", "layer9.0.conv1"], "--map-units: layer9.0.conv1 is not an SK unit"),
    (["--channel-unit", "layer2.1.conv9"], "--channel-unit: layer2.1.conv9 is not an SK unit"),
    (["--images", "nowhere.jpg"], "nowhere.jpg: no such image"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(args, message, photos, tmp_path, capsys):
    pytest.importorskip("torch")
    base = {"--images": [str(photos[0])], "--scales": ["1"]}
    for i in range(0, len(args), 2):
        base[args[i]] = [args[i + 1]]
    argv = ["--model", "skresnet18", "--size", SIZE, "-o", tmp_path / "o"] + [
        x for k, v in base.items() for x in [k, *v]]
    code, out = run_cli(argv, capsys)
    assert code == 2 and message in out.err and len(out.err.strip().splitlines()) <= 2
    assert not (tmp_path / "o").exists()


def test_cli_unreadable_image_is_named(tmp_path, capsys):
    pytest.importorskip("torch")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    code, out = run_cli(["--model", "sknet_small", "--images", bad, "-o", tmp_path / "o"], capsys)
    assert code == 2 and "broken.jpg: cannot read as an image" in out.err
    assert not (tmp_path / "o").exists()


def test_cli_reads_a_checkpoint(photos, tmp_path, capsys, torch):
    pytest.importorskip("sknet.formats")  # the conversion issue's reader
    from sknet.backends.torch.attention import capture

    spec = get_spec("sknet_small")
    model = torch_model(spec, seed=11)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    code, out = run_cli(["--model", "sknet_small", "--checkpoint", tmp_path / "w.pth",
                         "--images", photos[0], "--scales", "1.0,1.5", "-o", tmp_path / "o"], capsys)
    assert code == 0 and "warning" not in out.err
    rows = read_csv(tmp_path / "o" / "attention.csv")
    expected = analyse(model, capture, spec, photos[:1], (1.0, 1.5), map_units=[]).means
    got = np.array([float(r["attn_3x3_d2"]) for r in rows]).reshape(1, 2, 3)
    np.testing.assert_allclose(got, expected[..., 1], rtol=0, atol=1e-8)
    # and not what the default seed gives
    assert np.abs(got - analyse(torch_model(spec, seed=0), capture, spec, photos[:1], (1.0, 1.5),
                                map_units=[]).means[..., 1]).max() > 1e-4


def test_cli_output_that_is_a_file_is_refused(photos, tmp_path, capsys):
    pytest.importorskip("torch")
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    code, out = run_cli(["--model", "sknet_small", "--images", photos[1], "-o", target], capsys)
    assert code == 2 and "results.txt: exists and is not a folder" in out.err
    assert target.read_text() == "keep me"
