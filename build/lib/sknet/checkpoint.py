"""Checkpoint files: PyTorch (.pth/.pt/.bin), MindSpore (.ckpt) and safetensors.

Reading never runs code from a file: PyTorch files load with ``weights_only=True`` (a
pickle that names any callable is refused before it is called), safetensors and
MindSpore's protobuf hold no code. Writing goes to a temporary file in the destination's
folder that is renamed over the destination only once complete, so a failed or
interrupted write leaves no partial file behind.

PyTorch files need PyTorch; ``.ckpt`` and safetensors files are parsed here, so reading
them needs neither MindSpore nor PyTorch, and writing a ``.ckpt`` needs MindSpore. Each
package is imported when a file of its format is first touched.
"""
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

import numpy as np

from .atomic import atomic_write
from .errors import CheckpointError, describe_mismatch
from .layouts import TRACKED, detect_scheme, names
from .params import tensor_specs

FORMATS = {".pth": "torch", ".pt": "torch", ".bin": "torch", ".ckpt": "mindspore",
           ".safetensors": "safetensors"}
FORMAT_LABEL = {"torch": "PyTorch", "mindspore": "MindSpore", "safetensors": "safetensors"}
# Where timm's, torchrun's and our own training checkpoints keep the weights, in order of preference.
STATE_KEYS = ("state_dict", "model", "state_dict_ema")
# nn.Momentum names its accumulators 'moments.<parameter name>'; safetensors files use the same.
MOMENTS = "moments."
# Scalars a MindSpore training checkpoint carries beside the parameters: the contract's, and
# those nn.Momentum and MindSpore's training wrappers (loss scaling, sink mode) save.
MS_SCALARS = ("epoch", "step", "learning_rate", "global_step", "momentum", "scale_sense",
              "current_iterator_step", "last_overflow_iterator_step", "epoch_num", "step_num")
NEEDS = {"torch": ("torch", "torch"), "mindspore": ("mindspore", "mindspore"),
         "safetensors": ("safetensors", "safetensors")}


@dataclass
class RawCheckpoint:
    """A file's contents as named in the file, before any layout or model is applied.

    ``optimizer`` is the PyTorch SGD ``state_dict`` for PyTorch files, and
    ``{parameter name: momentum array}`` for MindSpore and safetensors files.
    """
    path: str
    format: str
    tensors: Dict[str, np.ndarray]
    optimizer: Any = None
    scalars: Dict[str, Any] = field(default_factory=dict)


def format_of(path):
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise CheckpointError(f"{path}: unknown checkpoint format '{suffix or '(no extension)'}' "
                              f"(known: {', '.join(FORMATS)})")
    return FORMATS[suffix]


def _need(fmt, what):
    """Import the package a format needs now, or say in one line how to get it."""
    import importlib

    module, extra = NEEDS[fmt]
    try:
        importlib.import_module(module)
    except ImportError:
        raise CheckpointError(f"{what} a {FORMAT_LABEL[fmt]} file needs the '{module}' package: "
                              f"pip install 'sknet[{extra}]'") from None


def read(path):
    """The tensors, optimizer state and scalars of any supported file; one-line errors."""
    path = str(path)
    fmt = format_of(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if fmt == "torch":  # .ckpt and safetensors are parsed here, without their frameworks
        _need(fmt, "reading")
    reader = {"torch": _read_torch, "mindspore": _read_mindspore, "safetensors": _read_safetensors}[fmt]
    return reader(path)


def read_canonical(path, spec):
    """``{canonical name: ndarray}`` for ``spec`` from any supported file in any layout."""
    raw = read(path)
    scheme = detect_scheme(raw.tensors, path)
    return canonical_tensors(raw, spec, scheme)[0]


def mismatch(tensors, spec, scheme):
    """(missing, unexpected, 'name (file shape) vs (spec shape)') between a file's tensors and ``spec``.

    ``num_batches_tracked`` may be absent: only PyTorch files have it.
    """
    expected = names(spec, scheme)
    missing = [n for n, e in expected.items() if n not in tensors and e.kind != "tracked"]
    unexpected = [n for n in tensors if n not in expected]
    bad = [f"{n} {tuple(np.shape(tensors[n]))} vs {e.shape}" for n, e in expected.items()
           if n in tensors and e.kind != "tracked" and tuple(np.shape(tensors[n])) != e.shape]
    return missing, unexpected, bad


def canonical_tensors(raw, spec, scheme):
    """(canonical weights, {bn path: num_batches_tracked} or None) of ``raw`` under ``scheme``.

    Every tensor of ``spec`` must be there with its shape and nothing else may be.
    """
    expected = names(spec, scheme)
    missing, unexpected, bad = mismatch(raw.tensors, spec, scheme)
    if missing or unexpected or bad:
        raise CheckpointError(f"{raw.path}: does not fit model '{spec.name}' "
                              f"({describe_mismatch(missing, unexpected, bad)})")
    by_canonical, tracked = {}, {}
    for n, e in expected.items():
        if e.kind == "tracked":
            if n in raw.tensors:
                tracked[e.canonical[: -len(TRACKED) - 1]] = int(np.asarray(raw.tensors[n]).reshape(-1)[0])
        else:
            by_canonical[e.canonical] = raw.tensors[n]
    weights = {name: by_canonical[name] for name, *_ in tensor_specs(spec)}  # canonical order
    return weights, (tracked or None)


# ---------------------------------------------------------------- reading


def _one_line(text, limit=160):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _torch_to_numpy(t):
    import torch

    t = t.detach().cpu()
    # NumPy has no bfloat16; float32 holds every bfloat16 value exactly.
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _read_torch(path):
    import pickle

    import torch

    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    try:
        # mmap: tensors stay in the page cache instead of being copied into the heap.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: (?:GLOBAL )?([\w.]+)", str(err))
        what = f"would call or build {found.group(1)}" if found else \
            f"holds more than tensors ({_one_line(str(err).strip().splitlines()[-1] if str(err).strip() else err, 100)})"
        raise CheckpointError(f"{path}: refused: its pickle {what}; only tensors and plain containers "
                              f"are loaded, nothing in it was run") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... on damaged files
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint (truncated or not one: "
                              f"{_one_line(str(err) or type(err).__name__, 100)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    holder = next((k for k in STATE_KEYS if isinstance(obj.get(k), dict)), None)
    state = obj[holder] if holder else obj
    others = {k: v for k, v in obj.items() if k != holder} if holder else {}
    tensors = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry '{key}' is a {type(value).__name__}, not a tensor"
                                  + ("" if holder else f" (no {'/'.join(STATE_KEYS)} dict found)"))
        tensors[key] = _torch_to_numpy(value)
    # DistributedDataParallel prefixes every name with 'module.'.
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    scalars = {k: others[k] for k in ("epoch", "step", "recipe") if isinstance(others.get(k), (int, str))}
    return RawCheckpoint(path, "torch", tensors, others.get("optimizer"), scalars)


class _Arena:
    """Reads byte ranges of a file into one aligned buffer: one copy of the data in memory.

    Views into the page cache (mmap) would count twice at peak once a writer copies them,
    and MindSpore's protobuf offsets leave arrays unaligned; reading each tensor once into
    its own aligned slot avoids both.
    """

    def __init__(self, path, f, size):
        self.path, self.f, self.size = path, f, size
        self.spans = []  # (key, [(offset, nbytes)], dtype, shape)

    def add(self, key, chunks, dtype, shape):
        self.spans.append((key, chunks, dtype, shape))

    def load(self):
        slots, total = [], 0
        for _, chunks, _, _ in self.spans:
            slots.append(total)
            total += -(-sum(n for _, n in chunks) // 64) * 64
        arena = np.empty(total, np.uint8)
        out = {}
        for (key, chunks, dtype, shape), at in zip(self.spans, slots):
            nbytes = sum(n for _, n in chunks)
            pos = at
            for offset, n in chunks:
                if offset + n > self.size:
                    raise CheckpointError(f"{self.path}: truncated: '{key}' ends at byte {offset + n} "
                                          f"of {self.size}")
                self.f.seek(offset)
                if self.f.readinto(memoryview(arena[pos:pos + n])) != n:
                    raise CheckpointError(f"{self.path}: truncated inside '{key}'")
                pos += n
            raw = arena[at:at + nbytes]
            if dtype == "bfloat16":  # NumPy has no bfloat16; float32 holds each value exactly
                value = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                value = raw.view(dtype)
            out[key] = value.reshape(shape)
        return out


SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bfloat16", "I64": "<i8",
                      "I32": "<i4", "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2",
                      "U8": "u1", "BOOL": "?"}


def _read_safetensors(path):
    """safetensors: an 8-byte header length, a JSON header of dtypes/shapes/offsets, the data."""
    import json

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise CheckpointError(f"{path}: cannot read as safetensors (truncated or not one: "
                                  f"header of {n} bytes in a {size}-byte file)")
        try:
            header = json.loads(f.read(n))
        except ValueError as err:
            raise CheckpointError(f"{path}: cannot read as safetensors (bad header: {_one_line(err, 80)})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: cannot read as safetensors (header is not a mapping)")
        meta = header.pop("__metadata__", None) or {}
        arena = _Arena(path, f, size)
        try:
            for key, info in header.items():
                begin, stop = info["data_offsets"]
                dtype = SAFETENSORS_DTYPES[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
                if stop - begin != int(np.prod(shape, dtype=np.int64)) * itemsize or begin < 0:
                    raise CheckpointError(f"{path}: '{key}': {stop - begin} bytes for shape {shape}")
                arena.add(key, [(8 + n + begin, stop - begin)], dtype, shape)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot read as safetensors (bad entry: {_one_line(err, 80)})") from None
        tensors = arena.load()
    moments = {k[len(MOMENTS):]: tensors.pop(k) for k in list(tensors) if k.startswith(MOMENTS)}
    scalars = {}
    for key in ("epoch", "step"):
        if key in meta:
            try:
                scalars[key] = int(meta[key])
            except ValueError:
                raise CheckpointError(f"{path}: metadata '{key}' is {meta[key]!r}, not an integer") from None
    if "recipe" in meta:
        scalars["recipe"] = meta["recipe"]
    return RawCheckpoint(path, "safetensors", tensors, moments or None, scalars)


MS_DTYPES = {"Int8": "i1", "UInt8": "u1", "Int16": "<i2", "UInt16": "<u2", "Int32": "<i4", "UInt32": "<u4",
             "Int64": "<i8", "UInt64": "<u8", "Float16": "<f2", "Float32": "<f4", "Float64": "<f8",
             "Bool": "?", "BFloat16": "bfloat16"}


class _Protobuf:
    """Just enough of the protobuf wire format to walk MindSpore's checkpoint messages."""

    def __init__(self, path, f, size):
        self.path, self.f, self.size = path, f, size

    def fail(self, why="truncated"):
        raise CheckpointError(f"{self.path}: cannot read as a MindSpore checkpoint ({why})")

    def varint(self):
        value, shift = 0, 0
        while True:
            b = self.f.read(1)
            if not b:
                self.fail()
            value |= (b[0] & 0x7F) << shift
            if b[0] < 0x80:
                return value
            shift += 7
            if shift > 63:
                self.fail("bad varint")

    def key(self):
        k = self.varint()
        return k >> 3, k & 7

    def length(self):
        n = self.varint()
        if self.f.tell() + n > self.size:
            self.fail()
        return n

    def skip(self, wire):
        if wire == 0:
            self.varint()
        elif wire == 1:
            self.f.seek(8, 1)
        elif wire == 2:
            self.f.seek(self.length(), 1)
        elif wire == 5:
            self.f.seek(4, 1)
        else:
            self.fail(f"wire type {wire}: not a checkpoint, or encrypted")


def _ms_tensor(pb, end):
    """TensorProto: dims = 1 (int64, repeated), tensor_type = 2 (string), tensor_content = 3 (bytes)."""
    dims, ttype, content = [], None, None
    while pb.f.tell() < end:
        field, wire = pb.key()
        if field == 1 and wire == 0:
            dims.append(pb.varint())
        elif field == 1 and wire == 2:
            stop = pb.length() + pb.f.tell()
            while pb.f.tell() < stop:
                dims.append(pb.varint())
        elif field == 2 and wire == 2:
            ttype = pb.f.read(pb.length()).decode("utf-8", "replace")
        elif field == 3 and wire == 2:
            n = pb.length()
            content = (pb.f.tell(), n)
            pb.f.seek(n, 1)
        else:
            pb.skip(wire)
    return dims, ttype, content


def _read_mindspore(path):
    """MindSpore's .ckpt: serialised Checkpoint messages, one Value (tag, TensorProto) each.

    Read here rather than with ``mindspore.load_checkpoint``: no MindSpore needed to read,
    and each tensor is copied once (MindSpore's loader holds the file, the parsed message
    and the tensors at once). Tensors over 512 MB come as several Values of one tag.
    """
    size = os.path.getsize(path)
    values = {}  # tag -> [dims, type, [(offset, n)]]
    with open(path, "rb") as f:
        pb = _Protobuf(path, f, size)
        while f.tell() < size:
            if size - f.tell() == 17 and f.read(7) == b"crc_num":  # crc_check=True trailer
                break
            field, wire = pb.key()
            if field != 1 or wire != 2:
                pb.fail(f"unexpected field {field} (wire type {wire}): not a checkpoint, or encrypted")
            end = pb.length() + f.tell()
            tag, tensor = None, None
            while f.tell() < end:
                field, wire = pb.key()
                if field == 1 and wire == 2:
                    tag = f.read(pb.length()).decode("utf-8", "replace")
                elif field == 2 and wire == 2:
                    n = pb.length()
                    tensor = _ms_tensor(pb, f.tell() + n)
                elif field == 3:
                    pb.fail("map parameters are not supported")
                else:
                    pb.skip(wire)
            if tag is None or tensor is None or tensor[1] is None or tensor[2] is None:
                pb.fail("a value without name, type or data")
            dims, ttype, content = tensor
            if tag in values:
                values[tag][2].append(content)
            else:
                values[tag] = [dims, ttype, [content]]
        arena = _Arena(path, f, size)
        strings = {}
        for tag, (dims, ttype, chunks) in values.items():
            if ttype == "str":
                offset, n = chunks[0]
                f.seek(offset)
                # MindSpore stores a string as NumPy's fixed-width unicode: UTF-32.
                strings[tag] = f.read(n).decode("utf-32-le", "replace").rstrip("\x00")
                continue
            if ttype not in MS_DTYPES:
                pb.fail(f"'{tag}' has unsupported type {ttype}")
            dtype = MS_DTYPES[ttype]
            itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
            shape = tuple(dims)
            if sum(n for _, n in chunks) != int(np.prod(shape, dtype=np.int64)) * itemsize:
                pb.fail(f"'{tag}' holds {sum(n for _, n in chunks)} bytes for shape {shape} of {ttype}")
            arena.add(tag, chunks, dtype, shape)
        loaded = arena.load()
    tensors, moments, scalars = {}, {}, dict(strings)
    for name, value in loaded.items():
        if name.startswith(MOMENTS):
            moments[name[len(MOMENTS):]] = value
        elif name in MS_SCALARS:
            scalars[name] = value
        else:
            tensors[name] = value
    for key in ("epoch", "step"):
        if key in scalars:
            scalars[key] = int(np.asarray(scalars[key]).reshape(-1)[0])
    return RawCheckpoint(path, "mindspore", tensors, moments or None, scalars)


# ---------------------------------------------------------------- writing


def _contiguous(value):
    # np.ascontiguousarray would turn a 0-d num_batches_tracked into shape (1,).
    value = np.asarray(value)
    return value if value.flags.c_contiguous else value.copy(order="C")


def write(path, tensors, momentum=None, scalars=None):
    """Write ``tensors`` ({name: ndarray}, in order) to ``path`` in the format its extension names.

    ``momentum`` ({name: ndarray}, trainable tensors in model.parameters() order) and
    ``scalars`` (epoch, step, recipe, lr...) make it a training checkpoint as the
    trainers write them.
    """
    fmt = format_of(path)
    _need(fmt, "writing")
    writer = {"torch": _write_torch, "mindspore": _write_mindspore, "safetensors": _write_safetensors}[fmt]
    atomic_write(path, lambda tmp: writer(tmp, tensors, momentum, scalars or {}))


def sgd_state(momentum, groups):
    """A ``torch.optim.SGD.state_dict()`` holding ``momentum`` ({name: buffer}).

    ``groups`` is [(hyperparameters, [names])]; torch numbers parameters group after
    group, so ids follow the groups' order.
    """
    import torch

    state, param_groups, pid = {}, [], 0
    for hyper, names in groups:
        ids = list(range(pid, pid + len(names)))
        for i, name in zip(ids, names):
            state[i] = {"momentum_buffer": torch.from_numpy(_contiguous(momentum[name]))}
        # param_names, as torch records them for named parameters: the file says which id is which.
        param_groups.append(dict(hyper, params=ids, param_names=list(names)))
        pid += len(names)
    return {"state": state, "param_groups": param_groups}


def _write_torch(tmp, tensors, momentum, scalars):
    import torch

    state = {k: torch.from_numpy(_contiguous(v)) for k, v in tensors.items()}
    if momentum is None:
        obj = state
    else:
        obj = {"model": state, "optimizer": sgd_state(momentum, scalars["groups"]),
               "epoch": int(scalars["epoch"]), "step": int(scalars["step"])}
        if scalars.get("recipe") is not None:
            obj["recipe"] = str(scalars["recipe"])
    torch.save(obj, tmp)


def _write_safetensors(tmp, tensors, momentum, scalars):
    from safetensors.numpy import save_file

    out = {k: _contiguous(v) for k, v in tensors.items()}
    meta = {"format": "pt"}
    if momentum is not None:
        out.update({MOMENTS + k: _contiguous(v) for k, v in momentum.items()})
        meta.update(epoch=str(int(scalars["epoch"])), step=str(int(scalars["step"])))
        if scalars.get("recipe") is not None:
            meta["recipe"] = str(scalars["recipe"])
    save_file(out, tmp, metadata=meta)


def _write_mindspore(tmp, tensors, momentum, scalars):
    import mindspore as ms

    def tensor(v):
        return ms.Tensor.from_numpy(_contiguous(v))

    params = [{"name": k, "data": tensor(v)} for k, v in tensors.items()]
    append = None
    if momentum is not None:
        params += [{"name": MOMENTS + k, "data": tensor(v)} for k, v in momentum.items()]
        # nn.Momentum indexes a per-step lr array with global_step: resume where the run stopped.
        params.append({"name": "global_step", "data": tensor(np.array([scalars["step"]], np.int32))})
        append = {"epoch": int(scalars["epoch"]), "step": int(scalars["step"])}
        if scalars.get("recipe") is not None:
            # A string entry: MindSpore's loader returns it as a str, and converting the file
            # back to PyTorch then knows how the trainer grouped the parameters.
            append["recipe"] = str(scalars["recipe"])
    try:
        ms.save_checkpoint(params, tmp, append_dict=append)
    except BaseException:
        # MindSpore writes to its own '<name>.tmp' first and leaves it behind when it fails.
        own = os.path.splitext(tmp)[0] + ".tmp"
        if os.path.exists(own):
            os.remove(own)
        raise
