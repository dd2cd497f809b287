"""Shared fixtures: the shipped specs, framework availability, MindSpore's execution mode."""
import os

import numpy as np
import pytest

os.environ.setdefault("GLOG_v", "3")

from sknet.registry import MODEL_DIR, get_spec, list_models  # noqa: E402

ALL_MODELS = list_models()
# Trainable parameters measured from timm 1.0.31 / mindcv 0.3.0 themselves (see
# ../shared/reference): an independent reference for the spec and both backends.
REFERENCE_PARAMS = {
    "skresnet18": 11_958_056,
    "skresnet34": 22_282_376,
    "skresnext50_32x4d": 27_479_784,
    "mindcv_skresnet18": 11_958_056,
    "mindcv_skresnext50_32x4d": 37_245_352,
    # Counted from the authors' prototxts (tests/fixtures/make_caffe_fixtures.py).
    "sknet50_caffe": 27_479_784,
    "sknet101_caffe": 48_686_760,
}


def pytest_report_header(config):
    return f"sknet models: {', '.join(ALL_MODELS)} (from {MODEL_DIR})"


@pytest.fixture(scope="session")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def ms():
    return pytest.importorskip("mindspore")


def use_device(target):
    from sknet.backends.mindspore import use_device as use

    use(target)


@pytest.fixture
def pynative(ms):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    use_device("CPU")
    yield ms


@pytest.fixture
def graph(ms):
    ms.set_context(mode=ms.GRAPH_MODE)
    use_device("CPU")
    yield ms
    ms.set_context(mode=ms.PYNATIVE_MODE)


def images(spec, batch=2, seed=0, size=None):
    """A fixed batch of standard-normal 'images' for ``spec`` (NCHW float32)."""
    size = size or spec.input.size
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, spec.input.in_chans, size, size)).astype(np.float32)


@pytest.fixture
def spec_of():
    return get_spec
