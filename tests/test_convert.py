"""Checkpoint conversion: layouts against timm's/mindcv's real key lists, bit-exact round
trips, equal outputs on both backends, optimizer state, and refusal of bad input."""
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ALL_MODELS, images
from sknet import get_spec
from sknet import formats
from sknet.cli import main
from sknet.convert import convert, detect_model, export, layout_tensors, read_canonical
from sknet.errors import CheckpointError
from sknet.layouts import detect_scheme, entries
from sknet.params import init_state, tensor_specs

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Key lists with shapes dumped from timm 1.0.31's and mindcv 0.3.0's own models (copies of
# ../shared/reference): the independent reference for our layouts.
REFERENCE = FIXTURES / "reference"


@pytest.fixture(autouse=True)
def one_thread():
    """One PyTorch thread: these models are tiny, and on a shared 2-core machine two threads
    spinning against other jobs cost far more than they gain. Restored after each test."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_state(spec, seed=0):
    """Every tensor random (BN statistics too, variances positive), so a swapped or dropped one shows."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape, _, _ in tensor_specs(spec):
        arr = rng.standard_normal(shape, dtype=np.float32)
        state[name] = np.abs(arr) + np.float32(0.5) if name.endswith("running_var") else arr
    return state


def random_tracked(spec, seed=0):
    rng = np.random.default_rng(seed)
    return {n[: -len(".weight")]: int(rng.integers(1, 10_000)) for n, _, k, _ in tensor_specs(spec)
            if k == "bn" and n.endswith(".weight")}


def read_reference(path):
    """[(name, shape)] from a timm keys file ('name (a, b)') or a mindcv params file (tab-separated)."""
    out = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = re.split(r"[ \t]", line, maxsplit=1)
        shape = shape.split("\t")[0]
        out.append((name, tuple(int(x) for x in re.findall(r"\d+", shape))))
    return out


def same_state(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k  # bits, not values


# ---------------------------------------------------------------- layouts


@pytest.mark.parametrize("model,scheme,filename", [
    ("skresnet18", "torch", "timm-skresnet18-keys.txt"),
    ("skresnext50_32x4d", "torch", "timm-skresnext50_32x4d-keys.txt"),
    ("mindcv_skresnet18", "mindcv", "mindcv-skresnet18-params.txt"),
    ("mindcv_skresnext50_32x4d", "mindcv", "mindcv-skresnext50_32x4d-params.txt"),
])
def test_layouts_generate_the_libraries_own_key_lists(model, scheme, filename):
    path = REFERENCE / filename
    expected = read_reference(path)
    got = [(e.name, tuple(e.shape)) for e in entries(get_spec(model), scheme)]
    assert got == expected  # names, shapes and the library's own order
    if scheme == "mindcv":  # the dump says which are trainable: BN moving statistics are not
        flags = [line.endswith("True") for line in path.read_text().splitlines() if line and line[0] != "#"]
        assert [e.trainable for e in entries(get_spec(model), scheme)] == flags


def test_schemes_are_the_backends_own_names(torch, pynative):
    import sknet.backends.mindspore as bm
    import sknet.backends.torch as bt
    from sknet.backends.mindspore.names import name_map

    spec = get_spec("skresnet18")
    assert [e.name for e in entries(spec, "torch")] == list(bt.build(spec).state_dict())
    ms_names = [e.name for e in entries(spec, "mindspore")]
    assert sorted(ms_names) == sorted(p.name for p in bm.build(spec).get_parameters())
    assert sorted(ms_names) == sorted(name_map(spec).values())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_scheme_and_model_are_detected_for_every_shipped_model(name):
    spec = get_spec(name)
    state = random_state(spec)
    for scheme in ("torch", "mindspore", "mindcv"):
        raw = formats.RawCheckpoint("mem", "safetensors", layout_tensors(spec, scheme, state))
        assert detect_scheme(raw.tensors) == scheme
        found = detect_model(raw, scheme)
        assert [e.name for e in entries(found, scheme)] == list(raw.tensors)
        # Twins share tensors (skresnet18 / mindcv_skresnet18, skresnext50_32x4d / sknet50_caffe):
        # mindcv names go to the mindcv replica, any other names to ours, never to a Caffe replica.
        twins = {"mindcv_skresnet18": "skresnet18", "sknet50_caffe": "skresnext50_32x4d"}
        if scheme == "mindcv":
            if name.startswith("mindcv_"):
                assert found.name == name
        else:
            assert found.name == twins.get(name, name)


def test_a_fine_tuned_head_and_stem_are_fitted():
    spec = get_spec("skresnet18").replace(num_classes=10, in_chans=1)
    raw = formats.RawCheckpoint("mem", "torch", layout_tensors(spec, "torch", random_state(spec)))
    found = detect_model(raw, "torch")
    assert (found.name, found.num_classes, found.input.in_chans) == ("skresnet18", 10, 1)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ALL_MODELS)
def test_round_trip_bit_exact_torch_safetensors_every_layout(name, tmp_path, torch):
    """Every shipped model: .pth (timm) -> safetensors (native, then mindcv) -> .pth, same bits."""
    spec = get_spec(name)
    state = random_state(spec, 1)
    src = export(spec, state, tmp_path / "a.pth", layout="timm")
    convert(src, tmp_path / "native.safetensors")
    convert(tmp_path / "native.safetensors", tmp_path / "mindcv.safetensors", layout="mindcv")
    convert(tmp_path / "mindcv.safetensors", tmp_path / "b.pth", layout="timm")
    # safetensors stores names sorted; the set is mindcv's.
    assert sorted(formats.read(tmp_path / "mindcv.safetensors").tensors) == sorted(e.name for e in entries(spec, "mindcv"))
    same_state(state, read_canonical(tmp_path / "native.safetensors", spec))
    same_state(state, read_canonical(tmp_path / "mindcv.safetensors", spec))
    same_state(formats.read(src).tensors, formats.read(tmp_path / "b.pth").tensors)


# MindSpore's .ckpt on one model per kind of tree: basic blocks without a max-pool, timm's
# skresnet18, and a user's own spec (grouped bottlenecks without first ReLU, three branches).
# The names come from the same code for every model and the safetensors test above runs them
# all; what this adds is MindSpore's reader and writer, which do not depend on the model.
@pytest.mark.parametrize("name", ["sknet_small", "skresnet18", str(FIXTURES / "tiny_bottleneck.yaml")],
                         ids=["sknet_small", "skresnet18", "tiny_bottleneck"])
def test_round_trip_bit_exact_through_mindspore_every_layout(name, tmp_path, torch, ms):
    spec = get_spec(name)
    state, tracked = random_state(spec, 2), random_tracked(spec, 2)
    src = export(spec, state, tmp_path / "a.pth", tracked=tracked)
    convert(src, tmp_path / "native.ckpt", model=name)
    convert(tmp_path / "native.ckpt", tmp_path / "mindcv.ckpt", model=name, layout="mindcv")
    convert(tmp_path / "mindcv.ckpt", tmp_path / "timm.ckpt", model=name, layout="timm")
    convert(tmp_path / "timm.ckpt", tmp_path / "m.safetensors", model=name, layout="mindcv")
    convert(tmp_path / "m.safetensors", tmp_path / "b.pth", model=name)
    names = formats.read(tmp_path / "native.ckpt").tensors
    assert list(names) == [e.name for e in entries(spec, "mindspore")]
    for f in ("native.ckpt", "mindcv.ckpt", "timm.ckpt", "m.safetensors", "b.pth"):
        same_state(state, read_canonical(tmp_path / f, spec))
    # num_batches_tracked survives where the layout has it (timm names, even in a .ckpt) ...
    timm = formats.read(tmp_path / "timm.ckpt").tensors
    back = formats.read(tmp_path / "b.pth").tensors
    bn = next(iter(tracked))
    assert int(formats.read(src).tensors[f"{bn}.num_batches_tracked"]) == tracked[bn]
    # ... and MindSpore's and mindcv's names have no place for it: it restarts at 0.
    assert int(timm[f"{bn}.num_batches_tracked"]) == 0 == int(back[f"{bn}.num_batches_tracked"])
    direct = tmp_path / "direct.safetensors"
    convert(src, direct, model=name)
    assert int(formats.read(direct).tensors[f"{bn}.num_batches_tracked"]) == tracked[bn]
    if spec.name == "tiny_bottleneck":  # not registered: found only when named
        with pytest.raises(CheckpointError, match="fits no registered model.*pass --model"):
            convert(src, tmp_path / "x.ckpt")


def test_a_cell_saved_by_mindspore_itself_converts(tmp_path, torch, pynative):
    import sknet.backends.mindspore as bm

    ms = pynative
    spec = get_spec("sknet_small")
    net = bm.build(spec)
    bm.load_canonical(net, random_state(spec, 3))
    ms.save_checkpoint(net, str(tmp_path / "own.ckpt"))
    report = convert(tmp_path / "own.ckpt", tmp_path / "own.pth")
    assert report.model == "sknet_small" and report.src_scheme == "mindspore"
    same_state(bm.to_canonical(net), read_canonical(tmp_path / "own.pth", spec))


# ---------------------------------------------------------------- equal outputs


def trained_like_state(spec, seed):
    """He-initialised weights with BN affine and statistics away from identity, as after training."""
    rng = np.random.default_rng(seed)
    state = init_state(spec, seed)
    for k, v in state.items():
        if k.endswith(("running_mean", ".bias")):
            state[k] = (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
        elif k.endswith("running_var") or (k.endswith(".weight") and v.ndim == 1):
            state[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
    return state


def test_timm_layout_file_gives_the_torch_models_outputs_on_both_backends(tmp_path, torch, pynative):
    import sknet.backends.torch as bt
    import sknet

    ms = pynative
    spec = get_spec("skresnet18")
    timm_file = export(spec, trained_like_state(spec, 5), tmp_path / "timm.pth", layout="timm")
    # timm's model takes the file with a strict load_state_dict; our module tree is timm's.
    reference = bt.SKNet(spec)
    reference.load_state_dict(torch.load(timm_file, weights_only=True), strict=True)
    x = images(spec, 2, size=32)
    with torch.no_grad():
        ref = reference.eval()(torch.from_numpy(x)).numpy()
    convert(timm_file, tmp_path / "ours.ckpt")
    convert(timm_file, tmp_path / "ours.pth")
    model = sknet.create_model("skresnet18", "torch", checkpoint=tmp_path / "ours.pth").eval()
    with torch.no_grad():
        assert np.array_equal(model(torch.from_numpy(x)).numpy(), ref)
    net = sknet.create_model("skresnet18", "mindspore", checkpoint=tmp_path / "ours.ckpt")
    net.set_train(False)
    out = net(ms.Tensor(x)).asnumpy()
    # fp32 parity across frameworks, relative to the largest logit (as in test_backends).
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    assert np.abs(ref).max() > 1e-2  # logits are not all ~0, so the comparison means something


def test_mindcv_layout_file_gives_the_same_outputs_on_both_backends(tmp_path, torch, pynative):
    import sknet.backends.mindspore as bm
    import sknet

    ms = pynative
    spec = get_spec("mindcv_skresnet18")
    state = trained_like_state(spec, 6)
    mindcv_file = export(spec, state, tmp_path / "mindcv.ckpt", layout="mindcv")
    assert "classifier.weight" in formats.read(mindcv_file).tensors
    # The cell mindcv's weights describe (test_backends checks the tree), with create_model's speed-ups.
    reference = bm.build(spec)
    bm.load_canonical(reference, state)
    reference.set_train(False)
    x = images(spec, 2, size=32)
    ref = reference(ms.Tensor(x)).asnumpy()
    assert convert(mindcv_file, tmp_path / "ours.pth").model == "mindcv_skresnet18"
    convert(mindcv_file, tmp_path / "ours.ckpt")
    net = sknet.create_model("mindcv_skresnet18", "mindspore", checkpoint=tmp_path / "ours.ckpt")
    net.set_train(False)
    assert np.array_equal(net(ms.Tensor(x)).asnumpy(), ref)
    model = sknet.create_model("mindcv_skresnet18", "torch", checkpoint=tmp_path / "ours.pth").eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    assert np.abs(ref).max() > 1e-2


@pytest.mark.parametrize("name", ["timm_tiny_basic", "timm_tiny_bottleneck"])
def test_files_made_by_timm_itself_give_timms_logits_on_both_backends(name, tmp_path, torch, pynative):
    """Frozen fixtures from timm 1.0.15's own classes (tests/fixtures/make_timm_fixtures.py)."""
    import sknet

    ms = pynative
    spec_file = str(FIXTURES / f"{name}.yaml")
    io = np.load(FIXTURES / f"{name}_io.npz")
    x, ref = io["x"], io["logits"]
    convert(FIXTURES / f"{name}.pth", tmp_path / "ours.ckpt", model=spec_file)
    convert(FIXTURES / f"{name}.pth", tmp_path / "mindcv.safetensors", model=spec_file, layout="mindcv")
    model = sknet.create_model(spec_file, "torch", checkpoint=tmp_path / "mindcv.safetensors").eval()
    with torch.no_grad():
        out_torch = model(torch.from_numpy(x)).numpy()
    net = sknet.create_model(spec_file, "mindspore", checkpoint=tmp_path / "ours.ckpt")
    net.set_train(False)
    out_ms = net(ms.Tensor(x)).asnumpy()
    # timm sums the branches in another order than we do: fp32 rounding, relative to the largest logit.
    for out in (out_torch, out_ms):
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    assert np.abs(ref).max() > 0.1 and np.abs(ref - ref.mean(0)).max() > 1e-3  # real, input-dependent logits


# ---------------------------------------------------------------- optimizer state


def _torch_training_checkpoint(spec, path, torch, steps=2, recipe=None, named=False):
    """A few SGD steps saved as the trainers do; with ``recipe``, grouped as they group
    (``named``: built from named parameters, so torch records param_names)."""
    import sknet.backends.torch as bt
    from sknet.convert import recipe_groups

    torch.manual_seed(0)
    model = bt.build(spec, seed=0)
    if recipe:
        params = dict(model.named_parameters())
        opt = torch.optim.SGD([dict(hyper, params=[(n, params[n]) if named else params[n] for n in names])
                               for hyper, names in recipe_groups(spec, recipe)])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    x = torch.from_numpy(images(spec, 4, seed=1))
    y = torch.tensor([0, 1, 2, 3])
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1, "step": steps,
                "recipe": recipe or "none"}, path)
    return model, opt, (x, y)


@pytest.mark.parametrize("named", [False, True], ids=["ids", "param_names"])
def test_grouped_optimizer_state_round_trips_and_resumes_identically(named, tmp_path, torch, ms):
    """torch -> MindSpore -> torch with the recipe's decay/no-decay groups, then one more step."""
    import sknet.backends.torch as bt

    spec, recipe = get_spec("sknet_small"), "fashion_mnist_small"
    src = tmp_path / "train.pth"
    model, opt, (x, y) = _torch_training_checkpoint(spec, src, torch, recipe=recipe, named=named)
    assert ("param_names" in opt.state_dict()["param_groups"][0]) == named
    assert len(opt.param_groups) == 2  # ids are then not model.parameters() order
    convert(src, tmp_path / "train.ckpt", with_optimizer=True)
    raw = formats.read(tmp_path / "train.ckpt")
    assert raw.scalars["epoch"] == 1 and raw.scalars["step"] == 2
    buffers = {n: opt.state[p]["momentum_buffer"].numpy() for n, p in model.named_parameters()}
    ms_names = {e.canonical: e.name for e in entries(spec, "mindspore")}
    assert set(raw.optimizer) == {ms_names[n] for n in buffers}
    for n, buf in buffers.items():
        assert raw.optimizer[ms_names[n]].tobytes() == buf.tobytes(), n
    assert raw.scalars["recipe"] == recipe  # so converting back groups parameters as the trainer did
    convert(tmp_path / "train.ckpt", tmp_path / "back.pth", with_optimizer=True)
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert (back["epoch"], back["step"], back["recipe"]) == (1, 2, recipe)

    # Resume from the round-tripped file: one more step equals one more step of the original run.
    resumed = bt.build(spec, seed=9)
    bt.load_canonical(resumed, bt.to_canonical(back["model"]))
    named = dict(resumed.named_parameters())
    from sknet.convert import recipe_groups
    ropt = torch.optim.SGD([dict(h, params=[named[n] for n in names]) for h, names in recipe_groups(spec, recipe)])
    ropt.load_state_dict(back["optimizer"])
    for m, o in ((model, opt), (resumed, ropt)):
        o.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        o.step()
    for (n, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n


def test_momentum_lands_in_mindspores_own_optimizer(tmp_path, torch, pynative):
    """The converted accumulators load by name into nn.Momentum over our MindSpore cell."""
    import sknet.backends.mindspore as bm

    ms = pynative
    spec = get_spec("sknet_small")
    _, opt, _ = _torch_training_checkpoint(spec, tmp_path / "train.pth", torch, steps=1)
    convert(tmp_path / "train.pth", tmp_path / "train.ckpt", with_optimizer=True)
    net = bm.build(spec)
    optimizer = ms.nn.Momentum(net.trainable_params(), learning_rate=0.05, momentum=0.9)
    params = ms.load_checkpoint(str(tmp_path / "train.ckpt"))
    not_loaded, _ = ms.load_param_into_net(optimizer, params)
    assert not [n for n in not_loaded if n.startswith("moments.")]
    buffers = [v["momentum_buffer"].numpy() for v in opt.state_dict()["state"].values()]
    assert len(optimizer.moments) == len(buffers)
    for moment, buf in zip(optimizer.moments, buffers):
        assert np.array_equal(moment.asnumpy(), buf)
    assert int(optimizer.global_step.asnumpy()[0]) == 1


def test_with_optimizer_on_a_weights_only_file_is_refused(tmp_path, torch):
    spec = get_spec("sknet_small")
    src = export(spec, random_state(spec), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="no optimizer state"):
        convert(src, tmp_path / "w.ckpt", with_optimizer=True)
    assert not (tmp_path / "w.ckpt").exists()


# ---------------------------------------------------------------- bad input


def cli(capsys, *argv):
    rc = main(["convert", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    return rc, err


def assert_refused(rc, err, dst, *needles):
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert not Path(dst).exists()
    assert not [p for p in Path(dst).parent.iterdir() if ".tmp" in p.name]


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, capsys, torch):
    class Payload:
        def __init__(self, target):
            self.target = target

        def __reduce__(self):
            return open, (str(self.target), "w")  # unpickling creates the file

    evil = tmp_path / "evil.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}, "x": Payload(tmp_path / "pwned")}, evil)
    dst = tmp_path / "out.ckpt"
    rc, err = cli(capsys, evil, dst)
    assert_refused(rc, err, dst, "evil.pth", "refused", "io.open")
    assert not (tmp_path / "pwned").exists()
    # The payload is real: plain unpickling of the same bytes does create the file.
    control = tmp_path / "control.pth"
    torch.save({"x": Payload(tmp_path / "control-ran")}, control)
    with zipfile.ZipFile(control) as z:
        pickle.loads(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
    assert (tmp_path / "control-ran").exists()


@pytest.fixture
def small_file(tmp_path, torch):
    spec = get_spec("sknet_small")
    return spec, export(spec, random_state(spec), tmp_path / "small.pth")


@pytest.mark.parametrize("fmt", [".pth", ".safetensors", ".ckpt"])
def test_truncated_file(fmt, small_file, tmp_path, capsys):
    if fmt == ".ckpt":
        pytest.importorskip("mindspore")
    spec, src = small_file
    full = tmp_path / f"full{fmt}"
    convert(src, full)
    cut = tmp_path / f"cut{fmt}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    dst = tmp_path / "out" / "dst.pth"
    dst.parent.mkdir()
    rc, err = cli(capsys, cut, dst)
    assert_refused(rc, err, dst, f"cut{fmt}", "truncated")


def _edited(small_file, tmp_path, edit):
    spec, src = small_file
    tensors = formats.read(src).tensors
    edit(tensors)
    path = tmp_path / "edited.safetensors"
    formats.write(path, tensors)
    return path


def test_missing_keys(small_file, tmp_path, capsys):
    drop = ["layer2.0.conv1.attn.bn.running_var", "fc.bias"]
    src = _edited(small_file, tmp_path, lambda t: [t.pop(k) for k in drop])
    dst = tmp_path / "dst.ckpt"
    rc, err = cli(capsys, src, dst, "--model", "sknet_small")
    assert_refused(rc, err, dst, "edited.safetensors", "2 missing: layer2.0.conv1.attn.bn.running_var, fc.bias")
    rc, err = cli(capsys, src, dst)  # without --model: names the closest model and the same keys
    assert_refused(rc, err, dst, "closest: 'sknet_small'", "2 missing")


def test_unexpected_keys(small_file, tmp_path, capsys):
    def add(t):
        for i in range(5):
            t[f"extra.{i}.weight"] = np.zeros(3, np.float32)

    src = _edited(small_file, tmp_path, add)
    dst = tmp_path / "dst.pth"
    rc, err = cli(capsys, src, dst, "--model", "sknet_small")
    assert_refused(rc, err, dst, "5 unexpected: extra.0.weight, extra.1.weight, extra.2.weight (+2 more)")


def test_shape_mismatch(small_file, tmp_path, capsys):
    def bad(t):
        t["layer1.0.conv2.conv.weight"] = t["layer1.0.conv2.conv.weight"][:, :16].copy()

    src = _edited(small_file, tmp_path, bad)
    dst = tmp_path / "dst.pth"
    rc, err = cli(capsys, src, dst, "--model", "sknet_small")
    assert_refused(rc, err, dst, "1 shape mismatch: layer1.0.conv2.conv.weight (32, 16, 3, 3) vs (32, 32, 3, 3)")


def test_wrong_model(small_file, tmp_path, capsys):
    _, src = small_file
    dst = tmp_path / "dst.pth"
    rc, err = cli(capsys, src, dst, "--model", "skresnet18")
    assert_refused(rc, err, dst, "does not fit model 'skresnet18'", "missing", "shape mismatch")


def test_unreadable_and_unknown(tmp_path, capsys):
    dst = tmp_path / "dst.pth"
    rc, err = cli(capsys, tmp_path / "nope.pth", dst)
    assert_refused(rc, err, dst, "nope.pth: no such file")
    (tmp_path / "notes.txt").write_text("hello")
    rc, err = cli(capsys, tmp_path / "notes.txt", dst)
    assert_refused(rc, err, dst, "unknown checkpoint format '.txt'")
    (tmp_path / "text.pth").write_text("hello")
    rc, err = cli(capsys, tmp_path / "text.pth", dst)
    assert_refused(rc, err, dst, "text.pth: cannot read as a PyTorch checkpoint")
    (tmp_path / "text.safetensors").write_text("hello")
    rc, err = cli(capsys, tmp_path / "text.safetensors", dst)
    assert_refused(rc, err, dst, "text.safetensors: cannot read as safetensors")
    (tmp_path / "text.ckpt").write_text("hello there")
    rc, err = cli(capsys, tmp_path / "text.ckpt", dst)
    assert_refused(rc, err, dst, "text.ckpt: cannot read as a MindSpore checkpoint")


def test_destination_folder_must_exist(small_file, tmp_path, capsys):
    _, src = small_file
    dst = tmp_path / "no" / "such" / "dir" / "x.pth"
    rc, err = cli(capsys, src, dst)
    assert rc == 2 and len(err.splitlines()) == 1 and "folder" in err and "does not exist" in err
    assert not (tmp_path / "no").exists()


def test_an_adam_state_is_not_taken_for_sgd(tmp_path, torch):
    import sknet.backends.torch as bt

    spec = get_spec("sknet_small")
    model = bt.build(spec)
    opt = torch.optim.Adam(model.parameters())
    model(torch.from_numpy(images(spec, 2))).sum().backward()
    opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 0, "step": 1}, tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match="exp_avg.*not SGD with momentum"):
        convert(tmp_path / "a.pth", tmp_path / "a.ckpt", with_optimizer=True)
    assert not (tmp_path / "a.ckpt").exists()


def test_a_failed_write_leaves_the_old_destination_and_no_temp_file(small_file, tmp_path, monkeypatch):
    _, src = small_file
    dst = tmp_path / "dst.safetensors"
    dst.write_bytes(b"previous")

    def half_then_fail(tmp, *args):
        Path(tmp).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(formats.safetensors, "write", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        convert(src, dst)
    assert dst.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_cli_prints_what_it_did(small_file, tmp_path, capsys):
    _, src = small_file
    assert main(["convert", str(src), str(tmp_path / "x.safetensors"), "--layout", "mindcv"]) == 0
    out = capsys.readouterr().out
    assert "sknet_small" in out and "mindcv names" in out and "x.safetensors" in out


def test_training_checkpoint_layouts_of_timm_and_ddp_are_found(tmp_path, torch):
    """Weights nested under state_dict / model / state_dict_ema, with DDP's 'module.' prefix."""
    spec = get_spec("sknet_small")
    state = random_state(spec, 4)
    plain = formats.read(export(spec, state, tmp_path / "plain.pth")).tensors
    nested = {k: torch.from_numpy(v) for k, v in plain.items()}
    ddp = {f"module.{k}": v for k, v in nested.items()}
    for i, obj in enumerate([{"epoch": 3, "arch": "sknet_small", "state_dict": ddp, "optimizer": {}},
                             {"model": nested, "epoch": 1, "step": 10},
                             {"state_dict_ema": nested, "metric": 0.5}]):
        torch.save(obj, tmp_path / f"{i}.pth")
        convert(tmp_path / f"{i}.pth", tmp_path / f"{i}.safetensors")
        same_state(state, read_canonical(tmp_path / f"{i}.safetensors", spec))


def test_ckpt_reader_agrees_with_mindspores_own_loader(tmp_path, ms):
    """Our .ckpt parser against mindspore.load_checkpoint: dtypes, scalars, strings, crc trailer."""
    rng = np.random.default_rng(0)
    arrays = {"w16": rng.standard_normal((3, 4)).astype(np.float16), "w32": rng.standard_normal((2, 3, 1, 1)).astype(np.float32),
              "w64": rng.standard_normal(5), "i32": np.arange(7, dtype=np.int32), "u8": np.arange(4, dtype=np.uint8),
              "flag": np.array([True, False]), "scalar": np.array(5, np.int64)}
    for crc in (False, True):
        path = str(tmp_path / f"x{crc}.ckpt")
        ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in arrays.items()], path,
                           append_dict={"epoch": 3, "step": 7, "note": "hello"}, crc_check=crc)
        theirs = ms.load_checkpoint(path)
        ours = formats.read(path)
        assert ours.scalars["epoch"] == int(theirs["epoch"].asnumpy()) == 3
        assert ours.scalars["step"] == 7 and ours.scalars["note"] == theirs["note"] == "hello"
        assert list(ours.tensors) == list(arrays)
        for k, v in ours.tensors.items():
            ref = theirs[k].asnumpy()
            assert v.dtype == ref.dtype and v.shape == ref.shape and v.tobytes() == ref.tobytes(), k


def test_a_missing_package_is_one_line_and_writes_nothing(small_file, tmp_path, capsys, monkeypatch):
    _, src = small_file
    monkeypatch.setitem(formats.NEEDS, "mindspore", ("no_such_package_for_this_test", "mindspore"))
    dst = tmp_path / "dst.ckpt"
    rc, err = cli(capsys, src, dst)
    assert_refused(rc, err, dst, "writing a MindSpore file needs the 'no_such_package_for_this_test' package",
                   "pip install 'sknet[mindspore]'")


def test_a_mindspore_run_without_recipe_needs_recipe_for_torch_groups(tmp_path, capsys, ms):
    """A .ckpt as the MindSpore trainer writes it (moments, epoch, step, lr array, global_step)."""
    spec = get_spec("sknet_small")
    rng = np.random.default_rng(0)
    params = [{"name": e.name, "data": ms.Tensor(v)}
              for e, v in zip(entries(spec, "mindspore"), layout_tensors(spec, "mindspore", random_state(spec)).values())]
    params += [{"name": "moments." + e.name, "data": ms.Tensor(rng.standard_normal(e.shape).astype(np.float32))}
               for e in entries(spec, "mindspore") if e.trainable]
    params += [{"name": "global_step", "data": ms.Tensor(np.array([3], np.int32))},
               {"name": "learning_rate", "data": ms.Tensor(np.array([0.1, 0.2, 0.3, 0.4], np.float32))}]
    ms.save_checkpoint(params, str(tmp_path / "run.ckpt"), append_dict={"epoch": 0, "step": 3})
    assert main(["convert", str(tmp_path / "run.ckpt"), str(tmp_path / "one.pth"), "--with-optimizer"]) == 0
    assert "pass --recipe" in capsys.readouterr().out
    import torch

    one = torch.load(tmp_path / "one.pth", weights_only=True)["optimizer"]
    assert len(one["param_groups"]) == 1 and one["param_groups"][0]["lr"] == pytest.approx(0.4)
    assert main(["convert", str(tmp_path / "run.ckpt"), str(tmp_path / "two.pth"), "--with-optimizer",
                 "--recipe", "fashion_mnist_small"]) == 0
    two = torch.load(tmp_path / "two.pth", weights_only=True)
    decays = [g["weight_decay"] for g in two["optimizer"]["param_groups"]]
    assert decays == [5e-4, 0.0] and two["step"] == 3 and two["recipe"] == "fashion_mnist_small"
    # conv/linear weights decay, BN and biases not (the recipe's rule), each buffer under its name
    kinds = {n: k for n, _, k, _ in tensor_specs(spec)}
    decayed = two["optimizer"]["param_groups"][0]["param_names"]
    assert decayed == [n for n, _, k, t in tensor_specs(spec) if t and k != "bn" and n.endswith(".weight")]
    assert {kinds[n] for n in two["optimizer"]["param_groups"][1]["param_names"]} <= {"bn", "linear"}
    moments = formats.read(tmp_path / "run.ckpt").optimizer
    for group in two["optimizer"]["param_groups"]:
        for pid, name in zip(group["params"], group["param_names"]):
            kind = next(e for e in entries(spec, "torch") if e.name == name)
            ms_name = next(e.name for e in entries(spec, "mindspore") if e.canonical == kind.canonical)
            assert np.array_equal(two["optimizer"]["state"][pid]["momentum_buffer"].numpy(), moments[ms_name])
