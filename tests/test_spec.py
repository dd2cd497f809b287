"""The spec: loading, validation errors, and the figures every shipped model must have."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ALL_MODELS, REFERENCE_PARAMS
from sknet import SpecError, create_model, get_spec, list_models, load_spec
from sknet.cli import main
from sknet.tree import count_macs, count_params, sk_units

BASE = yaml.safe_load((Path(__file__).parent.parent / "configs/models/skresnet18.yaml").read_text())


def write_spec(tmp_path, edit):
    data = json.loads(json.dumps(BASE))
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BAD_SPECS = [
    ("unknown key", lambda d: d["stem"].update(kernal_size=7), "'stem.kernal_size': unknown key"),
    ("wrong type", lambda d: d["stages"].update(depths=[2, "two", 2, 2]), "'stages.depths[1]': expected int"),
    ("negative depth", lambda d: d["stages"].update(depths=[2, -1, 2, 2]), "'stages.depths[1]': must be >= 1"),
    ("no branches", lambda d: d["sk"].update(branches=[]), "'sk.branches': needs at least one branch (M >= 1)"),
    ("groups", lambda d: d.update(block={"type": "bottleneck"}) or d["stages"].update(groups=32, base_width=1),
     "'stages.groups': stage 0: 16 -> 32 channels are not divisible by 32 groups"),
    ("split", lambda d: d["sk"].update(branches=[{"kernel_size": 3, "dilation": d} for d in (1, 2, 3)]),
     "'stages.channels[0]': SK input of 64 channels cannot be split across 3 branches"),
    ("mismatched lists", lambda d: d["stages"].update(strides=[1, 2, 2]), "'stages.strides': has 3 entries for 4 stages"),
    ("even kernel", lambda d: d["sk"]["branches"][1].update(kernel_size=4),
     "'sk.branches[1].kernel_size': must be a positive odd number, got 4"),
    ("bad literal", lambda d: d["stem"]["pool"].update(padding="valid"), "'stem.pool.padding': expected one of"),
    ("missing name", lambda d: d.pop("name"), "'name': required key is missing"),
    ("bool as int", lambda d: d.update(num_classes=True), "'num_classes': expected int, got True"),
    # Bounds checked before anything is sized from the value (a depth of 10^9 used to loop for hours).
    ("huge depth", lambda d: d["stages"].update(depths=[2, 10 ** 9, 2, 2]),
     "'stages.depths[1]': must be at most 256, got 1000000000"),
    ("huge width", lambda d: d["stages"].update(channels=[64, 128, 256, 10 ** 5]),
     "'stages.channels[3]': must be at most 8192, got 100000"),
    ("huge input", lambda d: d["input"].update(size=10 ** 6), "'input.size': must be at most 4096"),
    ("too many parameters", lambda d: d["stages"].update(channels=[8192] * 4, depths=[64] * 4),
     "parameters, more than the limit of 2,000,000,000"),
]


@pytest.mark.parametrize("label,edit,message", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_is_one_line_naming_file_and_key(tmp_path, capsys, label, edit, message):
    path = write_spec(tmp_path, edit)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    assert main(["info", str(path)]) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and message in out.err and out.out == ""


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nstages: {depths: [1, 2\n")
    with pytest.raises(SpecError, match=rf"^{path}: invalid YAML at line \d+"):
        load_spec(path)


def test_cli_exit_code_in_a_real_process(tmp_path):
    path = write_spec(tmp_path, lambda d: d["sk"].update(rd_ratio=0))
    proc = subprocess.run([sys.executable, "-m", "sknet", "info", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"sknet info: error: {path}: 'sk.rd_ratio': must be in (0, 1], got 0.0"


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_spec_params_match_timm_and_mindcv(name):
    assert count_params(get_spec(name)) == REFERENCE_PARAMS[name]


def test_sknet50_and_101_match_the_paper():
    # Paper Table 2: SKNet-50 27.5M / 4.47 GFLOPs, SKNet-101 48.9M / 8.46 GFLOPs (MACs).
    # timm's conv+fc hooks give 4.4627 G for SKNet-50 (../shared/reference/timm-sknet.md).
    s50, s101 = get_spec("sknet50"), get_spec("sknet101")
    assert count_macs(s50) == pytest.approx(4.46e9, rel=0.01)
    assert count_macs(s50) == pytest.approx(4.4627e9, rel=1e-4)
    assert count_params(s101) == pytest.approx(48.9e6, rel=0.01)
    assert count_macs(s101) == pytest.approx(8.46e9, rel=0.02)
    assert count_macs(get_spec("skresnet18")) == pytest.approx(1.8143e9, rel=1e-4)


def test_attention_width_is_max_c_over_r_and_l():
    # The paper's d = max(C/r, L) with r=16, L=32 for SKNet-50's SK widths 128..1024.
    units = sk_units(get_spec("skresnext50_32x4d"))
    assert {u.out_ch: u.attn_width for u in units} == {c: max(c // 16, 32) for c in (128, 256, 512, 1024)}
    assert len(units) == 16 and all(u.num_branches == 2 for u in units)


def test_registry_aliases_and_overrides(tmp_path):
    assert "sknet50" in list_models(include_aliases=True)
    assert get_spec("sknet50").name == "skresnext50_32x4d"
    spec = get_spec("skresnet18", num_classes=10, in_chans=1)
    assert spec.num_classes == 10 and spec.input.in_chans == 1 and spec.input.mean == pytest.approx((0.449,))
    assert count_params(spec) == REFERENCE_PARAMS["skresnet18"] - 513 * 990 - 64 * 2 * 49


def test_user_spec_file_builds(tmp_path, torch):
    path = write_spec(tmp_path, lambda d: d.update(name="mine", num_classes=7))
    model = create_model(str(path), num_classes=3)
    assert model.fc.out_features == 3


def test_import_sknet_imports_no_framework():
    code = ("import sys, sknet, sknet.cli, sknet.tree, sknet.params, sknet.backends; "
            "sknet.get_spec('skresnet18'); "
            "bad = [m for m in ('torch', 'mindspore', 'onnx', 'onnxruntime') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_framework_names_the_extra(monkeypatch):
    import builtins

    import sknet

    real = builtins.__import__

    def no_mindspore(name, *a, **k):
        if name == "mindspore" or name.startswith("mindspore."):
            raise ImportError(f"No module named '{name}'", name=name)
        return real(name, *a, **k)

    for mod in [m for m in sys.modules if m == "sknet.backends.mindspore" or m.startswith("sknet.backends.mindspore.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_mindspore)
    with pytest.raises(sknet.BackendMissing, match=r"pip install 'sknet\[mindspore\]'"):
        sknet.backend_module("mindspore")


@pytest.mark.parametrize("name", ALL_MODELS)
def test_info_json(name, capsys):
    assert main(["info", name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    spec = get_spec(name)
    assert info["params"] == count_params(spec) and info["macs"] == count_macs(spec)
    assert info["sk_units"] == sum(spec.stages.depths)
