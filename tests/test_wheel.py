"""The wheel works outside the checkout: built, installed into a fresh virtual environment,
and used from another folder (models listed, both backends built, a checkpoint converted)."""
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True, timeout=300)
    (path,) = out.glob("sknet-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh venv holding the wheel installed with its extras. Nothing may be downloaded here,
    so the venv sees this test's environment through a .pth line and pip, run with no index,
    resolves the extras' requirements against the distributions found there: a requirement
    they do not satisfy (a numpy pin, a missing framework) fails the install."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Appended after the venv's own site-packages: the wheel's sknet wins over this checkout's.
    Path(site, "zz_frameworks.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "-q",
                          f"sknet[all,test] @ {wheel.as_uri()}"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return env_dir


def test_wheel_carries_specs_recipes_and_no_top_level_backends(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "sknet/configs/models/skresnet18.yaml" in names
    assert "sknet/configs/recipes/fashion_mnist_small.yaml" in names
    assert "sknet/backends/torch/model.py" in names and "sknet/backends/mindspore/model.py" in names
    assert "sknet/training/loop.py" in names and "sknet/exits.py" in names
    assert not [n for n in names if n.startswith(("backends/", "configs/", "tests/"))]
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    numpy_pins = [line for line in meta.splitlines() if line.startswith("Requires-Dist: numpy")]
    # Only the mindspore extra pins numpy < 2; sknet[torch] takes any numpy >= 1.21.
    assert sorted(numpy_pins) == ['Requires-Dist: numpy<2; extra == "mindspore"', "Requires-Dist: numpy>=1.21"]


def test_installed_wheel_lists_builds_and_converts_from_another_folder(installed, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("mindspore")
    bindir = installed / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SKNET_CONFIG_DIR")}
    env["GLOG_v"] = "3"
    code = ("import sknet, sknet.backends.torch as bt, mindspore; "
            "assert sknet.__file__.startswith(r'%s'), sknet.__file__; "
            "print(len(sknet.list_models())); "
            "m = sknet.create_model('sknet_small', backend='torch'); "
            "c = sknet.create_model('sknet_small', backend='mindspore'); "
            "bt.load_canonical(m, bt.to_canonical(m)); "
            "import torch; torch.save(m.state_dict(), 'w.pth')") % installed
    run = subprocess.run([str(bindir / "python"), "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout.split()[-1]) >= 7
    info = subprocess.run([str(bindir / "sknet"), "info", "skresnet18"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "11,958,056" in info.stdout, info.stderr[-2000:]
    conv = subprocess.run([str(bindir / "sknet"), "convert", "w.pth", "w.ckpt", "--model", "sknet_small"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert conv.returncode == 0 and (tmp_path / "w.ckpt").stat().st_size > 0, conv.stderr[-2000:]
