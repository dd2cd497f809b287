"""The authors' Caffe SKNets: the layer-name rule against their prototxts (fixtures/caffe_layers.json,
made by fixtures/make_caffe_fixtures.py), a .caffemodel written with protobuf converted to both
backends and ONNX and checked against a NumPy forward of Caffe's layers, and the refusals."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import images
from sknet import get_spec
from sknet.cli import main
from sknet.data.transforms import EvalTransform
from sknet.formats import caffe
from sknet.formats.raw import RawCheckpoint
from sknet.params import tensor_specs
from sknet.tree import count_params

FACTS = json.loads((Path(__file__).resolve().parent / "fixtures" / "caffe_layers.json").read_text())
# Counted from the prototxts (conv and InnerProduct blobs, BN scale and bias) by the fixture script.
PROTOTXT_PARAMS = {"sknet50_caffe": 27_479_784, "sknet101_caffe": 48_686_760}
EPS = 1e-5

# Small enough to convert and run in a second, with every feature of the authors' models: the
# 7x7/2 stem with Caffe's max-pool (a 15 px map: rounding up gives 7, timm's padding 8), grouped
# 3x3 and dilated 3x3 branches, projections, a per-stage attention width, BGR input.
TINY = {
    "name": "tiny_caffe", "num_classes": 5,
    "input": {"size": 30, "in_chans": 3, "crop_pct": 1.0, "interpolation": "bilinear", "channel_order": "bgr",
              "mean": [104 / 255, 117 / 255, 123 / 255], "std": [1 / 255] * 3},
    "stem": {"channels": 8, "kernel_size": 7, "stride": 2, "pool": {"kernel_size": 3, "stride": 2, "padding": "caffe"}},
    "block": {"type": "bottleneck"},
    "stages": {"depths": [2, 1], "channels": [8, 16], "strides": [1, 2], "groups": 4, "base_width": 16},
    "sk": {"branches": [{"kernel_size": 3, "dilation": 1}, {"kernel_size": 3, "dilation": 2}],
           "rd_ratio": 0.25, "rd_divisor": 8, "attn_widths": [0, 4]},
    "norm": {"momentum": 0.05, "eps": EPS},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "tiny_caffe.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


@pytest.mark.parametrize("name", ["sknet50_caffe", "sknet101_caffe"])
def test_layer_rule_gives_the_authors_prototxt_layers(name):
    facts, spec = FACTS[name], get_spec(name)
    ours = [[layer, kind, [list(s) for _, s in blobs]] for layer, kind, blobs in caffe.caffe_layers(spec)]
    assert ours == facts["layers"]
    assert count_params(spec) == facts["params"] == PROTOTXT_PARAMS[name]
    # The whole mapping on the authors' names and shapes, without weights: blob i of every
    # layer holds the value i, so each tensor shows which blob it came from.
    tensors = {f"{layer}#{i}": np.broadcast_to(np.float32(i), s)
               for layer, _, shapes in facts["layers"] for i, s in enumerate(shapes)}
    raw = RawCheckpoint("mem", "caffe", tensors, scalars={"types": {n: k for n, k, _ in facts["layers"]}})
    weights = caffe.canonical(raw, spec)
    assert list(weights) == [n for n, *_ in tensor_specs(spec)]
    # CuDNNBatchNorm's blobs: scale, bias, running mean, running variance, taken as they are.
    for suffix, blob in (("weight", 0), ("bias", 1), ("running_mean", 2), ("running_var", 3)):
        assert all(np.all(v == blob) for k, v in weights.items() if k.endswith(f"bn.{suffix}") or
                   k.endswith(f"bn1.{suffix}") or k.endswith(f"downsample.1.{suffix}"))
    assert np.all(weights["fc.bias"] == 1) and weights["fc.weight"].shape == (1000, 2048)
    d = 16 if name == "sknet101_caffe" else 32
    assert weights["layer2.3.conv2.attn.fc_reduce.weight"].shape == (d, 256, 1, 1)


# ---------------------------------------------------------------- a file written with protobuf


def write_caffemodel(path, spec, seed=0, rename=None):
    """A .caffemodel of random weights under the rule's names (with parameterless layers
    between, as Caffe writes them); returns {(layer, blob): array}."""
    rng = np.random.default_rng(seed)
    net = caffe.messages()["NetParameter"](name="tiny")
    net.layer.add(name="input", type="Input")
    blobs = {}
    for name, kind, tensors in caffe.caffe_layers(spec):
        layer = net.layer.add(name=(rename or {}).get(name, name), type=kind)
        for i, (_, shape) in enumerate(tensors):
            if kind == "CuDNNBatchNorm":
                arr = rng.uniform(0.5, 1.5, shape) if i in (0, 3) else 0.1 * rng.standard_normal(shape)
            else:
                arr = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
            arr = arr.astype(np.float32)
            blob = layer.blobs.add()
            blob.shape.dim.extend(shape)
            blob.data.extend(arr.ravel().tolist())
            blobs[(name, i)] = arr
        if kind == "CuDNNBatchNorm":
            net.layer.add(name=f"{name}/relu", type="ReLU")
    path.write_bytes(net.SerializeToString())
    return blobs


def conv(x, w, stride=1, pad=0, dilation=1):
    """Caffe's convolution (cross-correlation), groups from the weight's input channels."""
    n, c, h, wd = x.shape
    o, cg, k, _ = w.shape
    g = c // cg
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    wo = (wd + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    out = np.zeros((n, g, o // g, ho, wo))
    wg = w.reshape(g, o // g, cg, k, k)
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i * dilation:i * dilation + stride * (ho - 1) + 1:stride,
                       j * dilation:j * dilation + stride * (wo - 1) + 1:stride]
            out += np.einsum("ngchw,goc->ngohw", patch.reshape(n, g, cg, ho, wo), wg[:, :, :, i, j])
    return out.reshape(n, o, ho, wo)


def caffe_max_pool(x, k=3, s=2):
    """Caffe's MAX pooling without padding: ceil((H - k) / s) + 1 windows, the last cut at the edge."""
    n, c, h, w = x.shape
    ho, wo = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1
    out = np.empty((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = x[:, :, i * s:min(i * s + k, h), j * s:min(j * s + k, w)].max(axis=(2, 3))
    return out


def caffe_forward(b, x):
    """The prototxt's graph in NumPy (float64) from the blobs by layer name: the reference."""
    def cbr(x, name, stride=1, pad=0, dilation=1, relu=True):
        y = conv(x, b[(name, 0)], stride, pad, dilation)
        scale, bias, mean, var = (b[(f"{name}/bn", i)].astype(np.float64) for i in range(4))
        y = (y - mean) / np.sqrt(var + EPS) * scale + bias
        return np.maximum(y, 0) if relu else y

    x = caffe_max_pool(cbr(x.astype(np.float64), "conv1/7x7_s2", 2, 3))
    names = {name for name, _ in b}
    blocks = sorted({n.split("/")[0] for n in names if n.endswith("/1x1_reduce")},
                    key=lambda s: tuple(int(v) for v in s[4:].split("_")))
    for blk in blocks:
        stage, index = (int(v) for v in blk[4:].split("_"))
        stride = 2 if stage > 2 and index == 1 else 1
        plain = next(n for n in names if n.startswith(f"{blk}/3x3g") and n.count("/") == 1 and "d" not in n[-3:])
        r = cbr(x, f"{blk}/1x1_reduce")
        a, d = cbr(r, plain, stride, 1), cbr(r, f"{plain}d2", stride, 2, 2)
        z = cbr((a + d).mean(axis=(2, 3), keepdims=True), f"{blk}/B_fc1")
        logits = conv(z, b[(f"{blk}/B_fc2", 0)]).reshape(len(x), 2, -1, 1, 1)  # B_re: (N, 2, C, 1)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        wsel = e / e.sum(axis=1, keepdims=True)
        y = cbr(a * wsel[:, 0] + d * wsel[:, 1], f"{blk}/1x1_increase", relu=False)
        short = cbr(x, f"{blk}/1x1_proj", stride, relu=False) if (f"{blk}/1x1_proj", 0) in b else x
        x = np.maximum(y + short, 0)
    return x.mean(axis=(2, 3)) @ b[("classifier", 0)].T.astype(np.float64) + b[("classifier", 1)]


def test_caffemodel_converts_to_both_backends_and_onnx_with_caffes_outputs(tiny, tmp_path, torch, pynative,
                                                                            capsys):
    import sknet
    from sknet.backends.onnx import build_model
    from sknet.backends.onnx.runtime import run
    from sknet.convert import read_canonical

    ms = pynative
    spec = get_spec(tiny)
    src = tmp_path / "tiny.caffemodel"
    blobs = write_caffemodel(src, spec, seed=1)
    for dst in ("w.pth", "w.ckpt", "w.safetensors"):
        assert main(["convert", str(src), str(tmp_path / dst), "--model", tiny]) == 0
    assert "the authors' Caffe names" in capsys.readouterr().out
    x = images(spec, 2, seed=3)
    ref = caffe_forward(blobs, x)
    scale = np.abs(ref).max()
    assert scale > 1e-1
    model = sknet.create_model(tiny, "torch", checkpoint=tmp_path / "w.pth").eval()
    with torch.no_grad():
        out_torch = model(torch.from_numpy(x)).numpy()
    net = sknet.create_model(tiny, "mindspore", checkpoint=tmp_path / "w.ckpt")
    net.set_train(False)
    out_ms = net(ms.Tensor(x)).asnumpy()
    tensors = read_canonical(tmp_path / "w.safetensors", spec)
    out_onnx = run(build_model(spec, tensors), x)
    # float32 backends against the float64 reference; across backends the usual parity tolerance.
    for out in (out_torch, out_ms, out_onnx):
        assert np.abs(out - ref).max() <= 1e-4 * scale
    assert np.abs(out_ms - out_torch).max() <= 1e-5 * scale
    # The same weights straight from the .caffemodel, and blobs where they belong.
    direct = sknet.create_model(tiny, "torch", checkpoint=src).eval()
    state = model.state_dict()
    with torch.no_grad():
        assert np.array_equal(direct(torch.from_numpy(x)).numpy(), out_torch)
    assert np.array_equal(state["bn1.running_var"].numpy(), blobs[("conv1/7x7_s2/bn", 3)].ravel())
    assert np.array_equal(state["layer2.0.conv2.paths.1.conv.weight"].numpy(), blobs[("conv3_1/3x3g4d2", 0)])
    assert np.array_equal(state["layer2.0.conv2.attn.fc_select.weight"].numpy(), blobs[("conv3_1/B_fc2", 0)])
    assert np.array_equal(state["fc.bias"].numpy(), blobs[("classifier", 1)])


def test_caffe_max_pool_rounds_up_on_every_backend(torch, pynative):
    """Odd and even maps, where rounding up and timm's padding differ in size or in windows."""
    import sknet.backends.mindspore.layers as ml
    import sknet.backends.torch.layers as tl
    from sknet.plan import pool_out
    from sknet.spec import PoolSpec

    ms = pynative
    pool = PoolSpec(3, 2, "caffe")
    rng = np.random.default_rng(0)
    for n in (15, 16, 112):
        x = rng.standard_normal((1, 2, n, n)).astype(np.float32)
        ref = caffe_max_pool(x)
        assert ref.shape[2] == pool_out(n, pool)
        with torch.no_grad():
            assert np.array_equal(tl.max_pool(pool)(torch.from_numpy(x)).numpy(), ref.astype(np.float32))
        assert np.array_equal(ml.max_pool(pool)(ms.Tensor(x)).asnumpy(), ref.astype(np.float32))


def test_bgr_input_is_pixels_less_the_caffe_mean():
    spec = get_spec("sknet50_caffe")
    img = np.zeros((224, 224, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 200, 100, 50      # R, G, B
    t = EvalTransform(224, spec.input.mean, spec.input.std, 1.0, "bilinear", bgr=True)
    x = t(img)
    np.testing.assert_allclose(x[:, 0, 0], [50 - 104, 100 - 117, 200 - 123], atol=1e-3)   # B, G, R
    from sknet.attention import normalise
    np.testing.assert_allclose(normalise(img, spec)[:, 0, 0], x[:, 0, 0], atol=1e-3)


def cli_error(capsys, *argv):
    rc = main(["convert", *map(str, argv)])
    return rc, capsys.readouterr().err.strip()


def test_truncated_or_mismatched_caffemodel_is_one_line_naming_the_layer(tiny, tmp_path, capsys):
    spec = get_spec(tiny)
    good = tmp_path / "good.caffemodel"
    write_caffemodel(good, spec)
    data = good.read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: len(data) // 2])
    rc, err = cli_error(capsys, cut, tmp_path / "x.pth", "--model", tiny)
    assert rc == 2 and "\n" not in err and "cut.caffemodel" in err and "truncated" in err
    renamed = tmp_path / "renamed.caffemodel"
    write_caffemodel(renamed, spec, rename={"conv3_1/B_fc1": "conv3_1/B_fc1_x"})
    rc, err = cli_error(capsys, renamed, tmp_path / "x.pth", "--model", tiny)
    assert rc == 2 and "\n" not in err and "layer 'conv3_1/B_fc1' (Convolution) is missing" in err
    # The paper's rule (d = 8 in stage 2) against a file with the prototxt-style d = 4.
    rule = dict(TINY, sk=dict(TINY["sk"], attn_widths=[]))
    other = tmp_path / "rule.yaml"
    other.write_text(yaml.safe_dump(rule))
    rc, err = cli_error(capsys, good, tmp_path / "x.pth", "--model", other)
    assert rc == 2 and "\n" not in err
    assert "layer 'conv3_1/B_fc1' blob 0 has shape (4, 16, 1, 1) where model 'tiny_caffe' has (8, 16, 1, 1)" in err
    rc, err = cli_error(capsys, good, tmp_path / "y.caffemodel", "--model", tiny)
    assert rc == 2 and "\n" not in err and "read, not written" in err
