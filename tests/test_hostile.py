"""Hostile and careless input (issue 17): every reader, writer and config loader answers a bad
file with one line naming it, within bounded time and memory, and leaves nothing behind.

Property-based where the input space is large (safetensors headers, .ckpt messages, cut
files); one case per class also runs through the command line (``python -m sknet``) to
check the exit status and that no traceback is printed.
"""
import collections
import io
import json
import os
import pickle
import resource
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sknet import formats, get_spec  # noqa: E402
from sknet.atomic import temp_path  # noqa: E402
from sknet.cli import main  # noqa: E402
from sknet.convert import convert, export  # noqa: E402
from sknet.errors import CheckpointError, SKNetError, SpecError  # noqa: E402
from sknet.params import tensor_specs  # noqa: E402
from sknet.typed import MAX_DEPTH, load_yaml, parse_value  # noqa: E402

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ROOT = Path(__file__).resolve().parents[1]


def state(spec, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s, dtype=np.float32) for n, s, _, _ in tensor_specs(spec)}


@pytest.fixture
def small(tmp_path):
    """sknet_small as safetensors: needs no framework to read or write."""
    spec = get_spec("sknet_small")
    return spec, export(spec, state(spec), tmp_path / "small.safetensors")


def sknet(*argv, **kw):
    """``python -m sknet ARGV`` in a child process: (exit status, stderr)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", GLOG_v="3")
    r = subprocess.run([sys.executable, "-m", "sknet", *map(str, argv)], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=env, **kw)
    return r.returncode, r.stderr.strip()


def refused(rc, err, *needles, limit=400):
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert len(err) <= limit, f"{len(err)} characters: {err[:200]}"
    for needle in needles:
        assert needle in err, err


def one_line_error(call, error=CheckpointError, limit=400):
    with pytest.raises(error) as info:
        call()
    text = str(info.value)
    assert "\n" not in text and len(text) <= limit, text[:500]
    return text


def read_or_one_line(path):
    """A fuzzed file reads, holding no more than the file (bfloat16 widens 2 bytes to 4), or fails in one line."""
    try:
        raw = formats.read(path)
    except CheckpointError as err:
        assert "\n" not in str(err) and len(str(err)) < 400
        return
    assert sum(v.nbytes for v in raw.tensors.values()) <= 2 * path.stat().st_size


# ---------------------------------------------------------------- safetensors


def safetensors_bytes(header, data=b""):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def f32(shape, offsets):
    return {"dtype": "F32", "shape": shape, "data_offsets": offsets}


SAFETENSORS_CASES = {
    "deep nesting": (('{"a": {"dtype": ' + "[" * 100_000 + "]" * 100_000 + "}}").encode(), b""),
    "metadata not a mapping": ({"__metadata__": [1, 2], "a": f32([1], [0, 4])}, b"\0" * 4),
    "metadata not strings": ({"__metadata__": {"epoch": 1}, "a": f32([1], [0, 4])}, b"\0" * 4),
    "float offset": ({"a": f32([1], [0.0, 4])}, b"\0" * 4),
    "offset past the end": ({"a": f32([1], [0, 400])}, b"\0" * 4),
    "negative shape": ({"a": f32([-1], [0, 4])}, b"\0" * 4),
    "overflowing shape": ({"a": f32([2 ** 62, 2 ** 62, 4], [0, 0])}, b""),
    "overlapping entries": ({"a": f32([1], [0, 4]), "b": f32([1], [0, 4])}, b"\0" * 4),
    "1 TiB claim": ({"a": {"dtype": "U8", "shape": [2 ** 40], "data_offsets": [0, 2 ** 40]}}, b"\0" * 4),
    "header longer than the file": (b"{}", b""),
    "float8": ({"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
    "epoch not a number": ({"__metadata__": {"epoch": "1e9"}, "a": f32([1], [0, 4])}, b"\0" * 4),
}


@pytest.mark.parametrize("case", list(SAFETENSORS_CASES))
def test_malformed_safetensors_is_one_line(case, tmp_path):
    header, data = SAFETENSORS_CASES[case]
    path = tmp_path / "bad.safetensors"
    raw = safetensors_bytes(header, data)
    if case == "header longer than the file":
        raw = struct.pack("<Q", 2 ** 40) + b"{}"
    path.write_bytes(raw)
    assert "bad.safetensors" in one_line_error(lambda: formats.read(path))


def test_malformed_safetensors_through_the_cli(tmp_path):
    path = tmp_path / "claim.safetensors"
    path.write_bytes(safetensors_bytes(*SAFETENSORS_CASES["1 TiB claim"]))
    rc, err = sknet("convert", path, tmp_path / "out.pth")
    refused(rc, err, "claim.safetensors", "cannot read as safetensors")
    assert not (tmp_path / "out.pth").exists()


DTYPES = st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E5M2", "XX", 3])
DIM = st.one_of(st.integers(-3, 8), st.sampled_from([2 ** 31, 2 ** 40, 2 ** 63 - 1, 2 ** 64]))
OFFSET = st.one_of(st.integers(-2, 80), st.floats(0, 80), st.sampled_from([2 ** 40, 2 ** 64]))


@st.composite
def safetensors_headers(draw):
    names = draw(st.lists(st.text(min_size=1, max_size=8), max_size=4, unique=True))
    header = {n: {"dtype": draw(DTYPES), "shape": draw(st.lists(DIM, max_size=3)),
                  "data_offsets": draw(st.lists(OFFSET, min_size=2, max_size=2))} for n in names}
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.one_of(st.none(), st.integers(), st.dictionaries(
            st.sampled_from(["epoch", "step", "recipe"]), st.one_of(st.text(max_size=5), st.integers()))))
    return header, draw(st.binary(max_size=96))


@FUZZ
@given(safetensors_headers())
def test_fuzzed_safetensors_headers_never_escape(tmp_path, case):
    header, data = case
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    read_or_one_line(path)


# ---------------------------------------------------------------- MindSpore .ckpt


def varint(n):
    n &= 2 ** 64 - 1  # negative int64: ten bytes, as protobuf writes them
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, payload):
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def ckpt_value(tag, dims, ttype, content):
    tensor = b"".join(field(1, d) for d in dims) + field(2, ttype.encode()) + field(3, content)
    return field(1, field(1, tag.encode()) + field(2, tensor))


def test_the_ckpt_builder_writes_what_the_reader_reads(tmp_path):
    path = tmp_path / "ok.ckpt"
    path.write_bytes(ckpt_value("w", [2, 3], "Float32", np.arange(6, dtype="<f4").tobytes())
                     + ckpt_value("epoch", [], "Int64", struct.pack("<q", 4)))
    raw = formats.read(path)
    assert np.array_equal(raw.tensors["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert raw.scalars["epoch"] == 4


CKPT_CASES = {
    "negative dims": ckpt_value("w", [-1, 4], "Float32", b"\0" * 16),
    "wrapping product": ckpt_value("w", [2 ** 32, 2 ** 32], "Float32", b""),
    "huge claim": ckpt_value("w", [2 ** 38], "UInt8", b"\0" * 8),
    "string epoch": ckpt_value("epoch", [], "str", "abc".encode("utf-32-le")),
    "empty epoch": ckpt_value("epoch", [0], "Int64", b""),
    "unknown type": ckpt_value("w", [1], "Float8", b"\0"),
    "too many dims": ckpt_value("w", [1] * 40, "Float32", b"\0" * 4),
}


@pytest.mark.parametrize("case", list(CKPT_CASES))
def test_malformed_ckpt_is_one_line(case, tmp_path):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(ckpt_value("ok", [1], "Float32", b"\0" * 4) + CKPT_CASES[case])
    assert "bad.ckpt" in one_line_error(lambda: formats.read(path))


def test_malformed_ckpt_through_the_cli(tmp_path):
    path = tmp_path / "wrap.ckpt"
    path.write_bytes(CKPT_CASES["wrapping product"])
    rc, err = sknet("convert", path, tmp_path / "out.safetensors")
    refused(rc, err, "wrap.ckpt", "shape")


@FUZZ
@given(st.lists(st.tuples(st.text(max_size=4), st.lists(st.integers(-2 ** 63, 2 ** 64), max_size=3),
                          st.sampled_from(["Float32", "Int64", "BFloat16", "str", "Bool", "x"]),
                          st.binary(max_size=24)), max_size=4),
       st.integers(0, 400))
def test_fuzzed_and_cut_ckpt_never_escapes(tmp_path, values, cut):
    data = b"".join(ckpt_value(*v) for v in values)
    path = tmp_path / "fuzz.ckpt"
    path.write_bytes(data[:cut] if cut < len(data) else data)
    read_or_one_line(path)


# ---------------------------------------------------------------- PyTorch files


def test_tensors_numpy_cannot_hold_are_refused_by_name(tmp_path, torch):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        odd = {"f8": torch.zeros(2, dtype=torch.float8_e4m3fn),
               "quantized": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8),
               "sparse": torch.ones(2, 2).to_sparse()}
    for name, tensor in odd.items():
        path = tmp_path / f"{name}.pth"
        torch.save({"model": {"conv1.weight": tensor}}, path)
        text = one_line_error(lambda: formats.read(path))
        assert f"{name}.pth" in text and "conv1.weight" in text and "NumPy cannot hold it" in text
    rc, err = sknet("convert", tmp_path / "f8.pth", tmp_path / "out.safetensors")
    refused(rc, err, "f8.pth", "float8_e4m3fn")


def test_non_string_keys_are_refused(tmp_path, torch):
    torch.save({1: torch.zeros(2), "b": torch.zeros(2)}, tmp_path / "keys.pth")
    assert "key 1 is a int" in one_line_error(lambda: formats.read(tmp_path / "keys.pth"))
    rc, err = sknet("convert", tmp_path / "keys.pth", tmp_path / "out.safetensors")
    refused(rc, err, "keys.pth", "not a name")


def _expanded_view(path, torch):
    """A zip checkpoint whose one tensor views 4 bytes as 2**40 floats (stride 0): 4 TiB if copied."""
    class Storage:
        pass

    class View:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (Storage(), 0, (2 ** 40,), (0,), False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 1) if isinstance(obj, Storage) else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"conv1.weight": View()})
    torch.save({"conv1.weight": torch.ones(1)}, path)
    with zipfile.ZipFile(path) as z:
        items = {n: z.read(n) for n in z.namelist()}
    items[next(n for n in items if n.endswith("data.pkl"))] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in items.items():
            z.writestr(name, data)


def test_a_view_claiming_a_terabyte_is_refused_before_copying(tmp_path, torch):
    _expanded_view(tmp_path / "view.pth", torch)
    text = one_line_error(lambda: formats.read(tmp_path / "view.pth"))
    assert "conv1.weight" in text and "more than its storage" in text


def test_malformed_optimizer_state_is_one_line(small, tmp_path, torch):
    spec, src = small
    model = {k: torch.from_numpy(v.copy()) for k, v in formats.read(src).tensors.items()}
    for i, opt in enumerate([{"state": {}, "param_groups": [{"lr": 0.1}]},
                             {"state": [], "param_groups": []},
                             {"state": {0: {"momentum_buffer": "x"}}, "param_groups": [{"params": [0]}]},
                             {"state": {}, "param_groups": [{"params": ["a"]}]}]):
        torch.save({"model": model, "optimizer": opt, "epoch": 0, "step": 1}, tmp_path / f"{i}.pth")
        text = one_line_error(lambda: convert(tmp_path / f"{i}.pth", tmp_path / "o.safetensors", with_optimizer=True))
        assert "not a torch.optim state_dict" in text
    rc, err = sknet("convert", tmp_path / "0.pth", tmp_path / "o.safetensors", "--with-optimizer")
    refused(rc, err, "0.pth", "optimizer")


# ---------------------------------------------------------------- values: dtype and finiteness


def test_nonfinite_weights_are_refused_unless_allowed(small, tmp_path, capsys):
    spec, src = small
    tensors = formats.read(src).tensors
    tensors["fc.bias"] = tensors["fc.bias"].copy()
    tensors["fc.bias"][:2] = [np.nan, np.inf]
    bad = tmp_path / "nan.safetensors"
    formats.write(bad, tensors)
    rc, err = sknet("convert", bad, tmp_path / "out.safetensors")
    refused(rc, err, "nan.safetensors", "fc.bias (2 of 10)", "NaN or Inf", "--allow-nonfinite")
    assert not (tmp_path / "out.safetensors").exists()
    assert main(["convert", str(bad), str(tmp_path / "out.safetensors"), "--allow-nonfinite"]) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "warning" in err and "fc.bias" in err
    assert np.isnan(formats.read(tmp_path / "out.safetensors").tensors["fc.bias"][0])
    # validate reads through the same rule
    rc, err = sknet("validate", "--recipe", "fashion_mnist_small", "--checkpoint", bad)
    refused(rc, err, "nan.safetensors", "NaN or Inf")


def test_integer_and_bool_weights_are_refused(small, tmp_path):
    spec, src = small
    for dtype in (np.int64, np.bool_):
        tensors = formats.read(src).tensors
        tensors["fc.weight"] = tensors["fc.weight"].astype(dtype)
        path = tmp_path / f"{np.dtype(dtype).name}.safetensors"
        formats.write(path, tensors)
        text = one_line_error(lambda: convert(path, tmp_path / "out.safetensors"))
        assert "fc.weight" in text and "floating point" in text
    assert not (tmp_path / "out.safetensors").exists()


# ---------------------------------------------------------------- YAML and --set

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


def test_a_yaml_alias_bomb_fails_fast_with_a_short_message(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 450
    start, before = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    text = one_line_error(lambda: load_yaml(path), SpecError, limit=200)
    assert time.monotonic() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
    assert "bomb.yaml" in text and "aliases" in text
    rc, err = sknet("info", path)
    refused(rc, err, "bomb.yaml", limit=200)


def test_deep_and_recursive_yaml_are_refused(tmp_path):
    for name, text in {"deep": "a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5),
                       "deeper": "[" * 100_000 + "]" * 100_000,
                       "recursive": "a: &a [1, *a]"}.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        assert f"{name}.yaml" in one_line_error(lambda: load_yaml(path), SpecError)
    rc, err = sknet("info", tmp_path / "deeper.yaml")
    refused(rc, err, "deeper.yaml")


def test_non_utf8_yaml_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    assert "not UTF-8" in one_line_error(lambda: load_yaml(path), SpecError)
    rc, err = sknet("info", path)
    refused(rc, err, "latin1.yaml", "not UTF-8")


def test_bad_set_values_are_one_line():
    assert parse_value("0.05", "optimizer.lr") == 0.05
    for value in (BOMB.replace("\n", "; "), "[" * 100, "{a: 1", "a: &a [*a]"):
        one_line_error(lambda: parse_value(value, "optimizer.lr"), SpecError)
    rc, err = sknet("train", "--recipe", "fashion_mnist_small", "--set", "optimizer.lr=" + "[" * 100)
    refused(rc, err, "--set", "optimizer.lr")


# ---------------------------------------------------------------- destinations and temporary files


def test_destination_is_a_folder(small, tmp_path):
    _, src = small
    (tmp_path / "dir.safetensors").mkdir()
    rc, err = sknet("convert", src, tmp_path / "dir.safetensors")
    refused(rc, err, "dir.safetensors", "is a folder")


def test_a_read_only_folder_is_one_line(small, tmp_path, monkeypatch):
    _, src = small
    real_open = os.open

    def denied(path, *args, **kw):  # root ignores folder permissions: refuse as the kernel would
        if str(path).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kw)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "open", denied)
    text = one_line_error(lambda: convert(src, tmp_path / "ro" / "x.safetensors"))
    assert "x.safetensors: cannot write: permission denied" in text


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a_full_disk_is_one_line_and_leaves_nothing(suffix, small, tmp_path):
    if suffix == ".ckpt":  # MindSpore logs a failed save itself: that line must not reach the user
        pytest.importorskip("mindspore")
    _, src = small
    limit = src.stat().st_size // 2

    def small_files():  # the kernel refuses writes past RLIMIT_FSIZE with EFBIG, as a full disk does with ENOSPC
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out"
    out.mkdir()
    rc, err = sknet("convert", src, out / f"big{suffix}", preexec_fn=small_files)
    refused(rc, err, f"big{suffix}", "cannot write")
    assert list(out.iterdir()) == []


def test_the_same_input_gives_the_same_bytes(small, tmp_path, torch):
    _, src = small
    for suffix in (".pth", ".safetensors"):
        first, second = tmp_path / f"one{suffix}", tmp_path / "elsewhere" / f"two{suffix}"
        second.parent.mkdir(exist_ok=True)
        convert(src, first)
        convert(src, second)
        assert first.read_bytes() == second.read_bytes(), suffix


def test_the_same_input_gives_the_same_ckpt_bytes(small, tmp_path, ms):
    _, src = small
    convert(src, tmp_path / "one.ckpt")
    convert(src, tmp_path / "two.ckpt")
    assert (tmp_path / "one.ckpt").read_bytes() == (tmp_path / "two.ckpt").read_bytes()


def test_a_killed_writes_leftover_is_removed_by_the_next_write(small, tmp_path):
    _, src = small
    dst = tmp_path / "dst.safetensors"
    stale = temp_path(dst)
    assert stale.parent == tmp_path and stale.name.startswith(".dst.safetensors.")
    stale.write_bytes(b"half a file from a SIGKILLed convert")
    convert(src, dst)
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["dst.safetensors", "small.safetensors"]
    assert formats.read(dst).tensors.keys() == formats.read(src).tensors.keys()


def test_a_killed_convert_leaves_only_a_temp_file_the_next_one_removes(small, tmp_path):
    """SIGKILL in the middle of the write, then the same convert again."""
    _, src = small
    code = ("import os, signal, sys; from sknet import convert as c, formats\n"
            "real = formats.safetensors.write\n"
            "def die(tmp, *a):\n    real(tmp, *a); os.kill(os.getpid(), signal.SIGKILL)\n"
            "formats.safetensors.write = die\n"
            f"c.convert({str(src)!r}, {str(tmp_path / 'dst.safetensors')!r})\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120)
    assert r.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert left == [temp_path(tmp_path / "dst.safetensors").name]
    convert(src, tmp_path / "dst.safetensors")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_mindspores_own_leftover_is_removed_by_the_next_write(small, tmp_path, ms):
    _, src = small
    dst = tmp_path / "dst.ckpt"
    own = tmp_path / (temp_path(dst).stem + ".tmp")  # MindSpore's '<name>.tmp' beside ours
    own.write_bytes(b"left by a SIGKILLed MindSpore save")
    convert(src, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.ckpt", "small.safetensors"]


def test_a_concurrent_write_to_the_same_destination_is_refused(small, tmp_path):
    import fcntl

    _, src = small
    dst = tmp_path / "dst.safetensors"
    with open(temp_path(dst), "wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another convert, mid-write
        assert "another process is writing it" in one_line_error(lambda: convert(src, dst))
        assert not dst.exists()
    convert(src, dst)
    assert dst.exists() and not temp_path(dst).exists()


def test_a_bad_value_is_quoted_by_its_prefix_only(tmp_path):
    row = "[" + ", ".join(["x" * 50] * 9) + "]"
    big = tmp_path / "big.yaml"  # num_classes is 729 strings of 50 characters, through aliases
    big.write_text(f"name: x\naliases: [&a {row}, &b [{', '.join(['*a'] * 9)}], &c [{', '.join(['*b'] * 9)}]]\n"
                   "num_classes: *c\n")
    long_key = tmp_path / "key.yaml"
    long_key.write_text("name: x\n" + "k" * 500 + ": 1\n")
    for path in (big, long_key):
        text = one_line_error(lambda: get_spec(str(path)), SpecError, limit=250)
        assert path.name in text and "x" * 60 not in text and "k" * 60 not in text


def test_bfloat16_tensors_are_widened_not_refused(tmp_path, torch):
    """The size checks count a tensor's bytes as stored, not after widening to float32."""
    weights = torch.randn(3, 4).to(torch.bfloat16)
    torch.save({"w": weights}, tmp_path / "bf16.pth")
    got = formats.read(tmp_path / "bf16.pth").tensors["w"]
    assert got.dtype == np.float32 and np.array_equal(got, weights.float().numpy())
    st = tmp_path / "bf16.safetensors"  # read by hand beside the library: 1.0 and -2.0
    st.write_bytes(safetensors_bytes({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
                                      "x": f32([1], [4, 8])}, struct.pack("<HHf", 0x3F80, 0xC000, 3.0)))
    raw = formats.read(st)
    assert raw.tensors["w"].tolist() == [1.0, -2.0] and raw.tensors["x"].tolist() == [3.0]


def test_a_training_checkpoint_with_a_string_epoch_is_one_line(small, tmp_path, torch):
    spec, src = small
    model = {k: torch.from_numpy(v.copy()) for k, v in formats.read(src).tensors.items()}
    opt = {"state": {}, "param_groups": [{"params": list(range(sum(1 for *_, t in tensor_specs(spec) if t)))}]}
    torch.save({"model": model, "optimizer": opt, "epoch": "three", "step": 1}, tmp_path / "s.pth")
    text = one_line_error(lambda: convert(tmp_path / "s.pth", tmp_path / "o.safetensors", with_optimizer=True))
    assert "s.pth" in text and "lacks epoch" in text
    convert(tmp_path / "s.pth", tmp_path / "o.safetensors")  # the weights alone still convert


def png_header(width, height):
    """A PNG of an IHDR chunk claiming ``width`` x ``height`` RGB, an empty IDAT and IEND:
    enough for PIL to open it and read its size, no pixels."""
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_decompression_bomb_image_is_one_line(tmp_path):
    from sknet.attention import load_image
    from sknet.data.folder import decode

    # 10^10 pixels: past PIL's decompression-bomb guard (2 x 89,478,485), refused at open.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(100_000, 100_000))
    for call in (lambda: load_image(bomb, get_spec("skresnet18")), lambda: decode(bomb, 3)):
        with pytest.raises(SKNetError, match="bomb.png.*could be decompression bomb") as info:
            call()
        assert "\n" not in str(info.value)
    rc, err = sknet("attention", "--model", "skresnet18", "--images", bomb, "-o", tmp_path / "out")
    # The command's one error line follows its warning that the weights are random.
    *warnings, last = err.splitlines()
    assert rc == 2 and "Traceback" not in err and not (tmp_path / "out").exists()
    assert warnings == [w for w in warnings if "warning: no --checkpoint" in w]
    assert last.startswith("sknet attention: error: ") and "bomb.png" in last and "decompression bomb" in last
