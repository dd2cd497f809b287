"""Caffe ``.caffemodel`` files (read-only), without Caffe: the authors' SKNet-50 and SKNet-101.

A ``.caffemodel`` is a serialised ``caffe.NetParameter``. The few messages it needs are
declared below with caffe.proto's field numbers (BVLC/caffe src/caffe/proto/caffe.proto;
implus/SKNet adds only ``batch_norm_param``, which weights do not need) and built with
the ``protobuf`` package at first use: no generated code to keep in step with a protobuf
release. Every other field of a layer (its convolution_param, param specs...) is left
unparsed.

Which layer holds which tensor is a rule over the model's block plan (``caffe_layers``),
the naming of the authors' prototxts (implus/SKNet models/sknet50.prototxt,
sknet101.prototxt): ``conv<stage + 2>_<block + 1>/`` then ``1x1_reduce``, ``3x3g32``
(``3x3g32d2`` for the dilated branch), ``B_fc1`` (+``/bn``), ``B_fc2``, ``1x1_increase``,
``1x1_proj``; the stem ``conv1/7x7_s2``; the head ``classifier``; each BN is its conv's
name + ``/bn``. The authors' BN is ``CuDNNBatchNorm`` (their
src/caffe/layers/cudnn_batch_norm_layer.cpp): four (1, C, 1, 1) blobs, scale, bias,
running mean, running variance (the variance itself, handed to
cudnnBatchNormalizationForwardInference; no scale-factor blob as Caffe's own BatchNorm
has), so values are copied unchanged and only reshaped to (C,).
"""
from functools import lru_cache

import numpy as np

from ..errors import CheckpointError
from .raw import RawCheckpoint, one_line

NAME, LABEL = "caffe", "Caffe .caffemodel"
BN_TYPES = ("CuDNNBatchNorm",)
# caffe.proto's messages, fields by number, as far as weights need them (proto2 labels: 1 optional, 3 repeated).
_I64, _I32, _FLOAT, _DOUBLE, _STRING, _MESSAGE = 3, 5, 2, 1, 9, 11
_MESSAGES = {
    "BlobShape": [("dim", 1, _I64, 3)],
    "BlobProto": [("num", 1, _I32, 1), ("channels", 2, _I32, 1), ("height", 3, _I32, 1), ("width", 4, _I32, 1),
                  ("data", 5, _FLOAT, 3), ("shape", 7, ".caffe.BlobShape", 1), ("double_data", 8, _DOUBLE, 3)],
    "LayerParameter": [("name", 1, _STRING, 1), ("type", 2, _STRING, 1), ("bottom", 3, _STRING, 3),
                       ("top", 4, _STRING, 3), ("blobs", 7, ".caffe.BlobProto", 3)],
    # The pre-2015 layer message: recognised only to name such a file's layers in an error.
    "V1LayerParameter": [("name", 4, _STRING, 1), ("blobs", 6, ".caffe.BlobProto", 3)],
    "NetParameter": [("name", 1, _STRING, 1), ("layers", 2, ".caffe.V1LayerParameter", 3),
                     ("layer", 100, ".caffe.LayerParameter", 3)],
}


@lru_cache(maxsize=1)
def messages():
    """{message name: class} of the caffe.proto subset above, built with the protobuf package."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FileDescriptorProto(name="sknet_caffe_subset.proto", package="caffe", syntax="proto2")
    for msg_name, fields in _MESSAGES.items():
        msg = fd.message_type.add(name=msg_name)
        for name, number, kind, label in fields:
            f = msg.field.add(name=name, number=number, label=label)
            if isinstance(kind, str):
                f.type, f.type_name = _MESSAGE, kind
            else:
                f.type = kind
            if label == 3 and kind in (_I64, _FLOAT, _DOUBLE):
                f.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}"))
            for name in _MESSAGES}


# ---------------------------------------------------------------- the layer-name rule


def caffe_layers(spec):
    """[(Caffe layer name, type, [(canonical tensor name, shape in the file)])] in the
    prototxt's order, from the spec's block plan; the shapes are Caffe's blob shapes."""
    from ..plan import build_plan
    from ..tree import param_layers, role_names

    plan = build_plan(spec)
    if any(b.reduce is None for b in plan.blocks):
        raise CheckpointError(f"model '{spec.name}': the Caffe layout is defined for bottleneck SKNets "
                              f"(the authors' SKNet-50/101), not basic blocks")
    out = []

    def conv(path, name, c):
        out.append((name, "Convolution", [(f"{path}.weight", (c.out_ch, c.in_ch // c.groups, c.kernel, c.kernel))]))

    def bn(path, name, channels):
        out.append((name, BN_TYPES[0], [(f"{path}.{s}", (1, channels, 1, 1))
                                        for s in ("weight", "bias", "running_mean", "running_var")]))

    stem = plan.stem.conv
    name = f"conv1/{stem.kernel}x{stem.kernel}_s{stem.stride}"
    conv("conv1", name, stem)
    bn("bn1", f"{name}/bn", stem.out_ch)
    for b in plan.blocks:
        stage, index = b.name[len("layer"):].split(".")
        p, role = b.name, role_names(b)
        prefix = f"conv{int(stage) + 1}_{int(index) + 1}"
        pairs = [(f"{p}.{role['reduce']}", f"{prefix}/1x1_reduce", b.reduce)]
        for i, branch in enumerate(b.sk.branches):
            dil = f"d{branch.dilation}" if branch.dilation > 1 else ""
            pairs.append((f"{p}.{role['sk']}.paths.{i}", f"{prefix}/{branch.kernel}x{branch.kernel}g{branch.groups}{dil}",
                          branch))
        for path, name, c in pairs:
            conv(f"{path}.conv", name, c)
            bn(f"{path}.bn", f"{name}/bn", c.out_ch)
        attn, u = f"{p}.{role['sk']}.attn", b.sk
        out.append((f"{prefix}/B_fc1", "Convolution", [(f"{attn}.fc_reduce.weight", (u.attn_width, u.channels, 1, 1))]))
        bn(f"{attn}.bn", f"{prefix}/B_fc1/bn", u.attn_width)
        out.append((f"{prefix}/B_fc2", "Convolution",
                    [(f"{attn}.fc_select.weight", (u.channels * u.num_branches, u.attn_width, 1, 1))]))
        conv(f"{p}.{role['expand']}.conv", f"{prefix}/1x1_increase", b.expand)
        bn(f"{p}.{role['expand']}.bn", f"{prefix}/1x1_increase/bn", b.out_ch)
        if b.downsample is not None:
            conv(f"{p}.downsample.0", f"{prefix}/1x1_proj", b.downsample)
            bn(f"{p}.downsample.1", f"{prefix}/1x1_proj/bn", b.out_ch)
    out.append(("classifier", "InnerProduct", [("fc.weight", (plan.num_classes, plan.num_features)),
                                               ("fc.bias", (plan.num_classes,))]))
    covered = {t.rsplit(".", 1)[0] for _, _, blobs in out for t, _ in blobs}
    assert covered == {x.path for x in param_layers(spec)}, "the Caffe rule misses a layer of the tree"
    return out


# ---------------------------------------------------------------- reading


def _blob_shape(blob):
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return tuple(int(d) for d in (blob.num, blob.channels, blob.height, blob.width))


def _squeezed(shape):
    """A shape without its leading 1s: legacy 4-D blobs pad an (out, in) weight to (1, 1, out, in)."""
    shape = tuple(shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


def read(path):
    """The file's layers that hold blobs, as ``{'<layer>#<i>': array}`` in file order; the
    layer types go to ``scalars['types']`` ({layer: type}). Only shapes are checked here."""
    from google.protobuf.message import DecodeError

    with open(path, "rb") as f:
        data = f.read()
    net = messages()["NetParameter"]()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable Caffe NetParameter (truncated or corrupt: "
                              f"{one_line(err, 80)})") from None
    if len(net.layers) and not len(net.layer):
        raise CheckpointError(f"{path}: written in Caffe's pre-2015 V1 layer format (first layer "
                              f"'{one_line(net.layers[0].name, 60)}'): upgrade it with Caffe's upgrade_net_proto_binary")
    tensors, types = {}, {}
    for layer in net.layer:
        if not len(layer.blobs):
            continue
        name = layer.name
        if name in types:
            raise CheckpointError(f"{path}: layer '{one_line(name, 60)}' appears twice")
        types[name] = layer.type
        for i, blob in enumerate(layer.blobs):
            shape = _blob_shape(blob)
            values = blob.data if len(blob.data) else blob.double_data
            if any(d < 0 for d in shape) or int(np.prod(shape, dtype=object)) != len(values):
                raise CheckpointError(f"{path}: layer '{one_line(name, 60)}' blob {i} holds {len(values)} values "
                                      f"for shape {shape}")
            tensors[f"{name}#{i}"] = np.asarray(values, np.float32 if len(blob.data) else np.float64).reshape(shape)
    if not tensors:
        raise CheckpointError(f"{path}: holds no layer with weights (a prototxt or an empty net?)")
    return RawCheckpoint(str(path), NAME, tensors, scalars={"types": types})


def fault(raw, spec):
    """The first layer of ``raw`` (from ``read``) at odds with ``spec``'s Caffe layout, as a
    one-line description, or None when every layer and blob fits."""
    expected = caffe_layers(spec)
    types = raw.scalars["types"]
    known = {name for name, _, _ in expected}
    for name, kind, blobs in expected:
        if name not in types:
            return f"layer '{name}' ({kind}) is missing"
        if types[name] != kind:
            return f"layer '{name}' is {one_line(types[name], 40)} where model '{spec.name}' has {kind}"
        count = sum(1 for k in raw.tensors if k.rpartition("#")[0] == name)
        if count != len(blobs):
            return f"layer '{name}' has {count} blobs where {kind} has {len(blobs)}"
        for i, (_, shape) in enumerate(blobs):
            got = raw.tensors[f"{name}#{i}"].shape
            if _squeezed(got) != _squeezed(shape):
                return f"layer '{name}' blob {i} has shape {got} where model '{spec.name}' has {shape}"
    extra = [name for name in types if name not in known]
    return f"layer '{one_line(extra[0], 60)}' ({types[extra[0]]}) is not in model '{spec.name}'" if extra else None


def canonical(raw, spec):
    """``{canonical name: ndarray}`` of ``spec`` from a read ``.caffemodel``; one line naming the
    first layer at fault when the file is not this model."""
    from ..params import tensor_specs

    why = fault(raw, spec)
    if why:
        raise CheckpointError(f"{raw.path}: does not fit model '{spec.name}': {why}")
    out = {}
    for name, _, blobs in caffe_layers(spec):
        for i, (tensor, _) in enumerate(blobs):
            out[tensor] = raw.tensors[f"{name}#{i}"]
    shapes = {n: s for n, s, _, _ in tensor_specs(spec)}
    return {n: np.ascontiguousarray(out[n].reshape(shapes[n])) for n in shapes}
