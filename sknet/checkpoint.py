"""Checkpoint files: PyTorch (.pth/.pt/.bin), MindSpore (.ckpt) and safetensors.

Reading never runs code from a file: PyTorch files load with ``weights_only=True`` (a
pickle that names any callable is refused before it is called), safetensors and
MindSpore's protobuf hold no code. Writing goes to a temporary file in the destination's
folder that is renamed over the destination only once complete, so a failed or
interrupted write leaves no partial file behind.

Only PyTorch files need PyTorch and only ``.ckpt`` needs MindSpore; each framework is
imported when a file of its format is first touched.
"""
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

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
# Scalars a MindSpore training checkpoint carries beside the parameters (contract + nn.Momentum).
MS_SCALARS = ("epoch", "step", "learning_rate", "global_step", "momentum")


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


def read(path):
    """The tensors, optimizer state and scalars of any supported file; one-line errors."""
    path = str(path)
    fmt = format_of(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    reader = {"torch": _read_torch, "mindspore": _read_mindspore, "safetensors": _read_safetensors}[fmt]
    return reader(path)


def read_canonical(path, spec):
    """``{canonical name: ndarray}`` for ``spec`` from any supported file in any layout."""
    raw = read(path)
    scheme = detect_scheme(raw.tensors, path)
    return canonical_tensors(raw, spec, scheme)[0]


def canonical_tensors(raw, spec, scheme):
    """(canonical weights, {bn path: num_batches_tracked} or None) of ``raw`` under ``scheme``.

    Every tensor of ``spec`` must be there with its shape and nothing else may be; a
    missing ``num_batches_tracked`` is not an error (only PyTorch files have them).
    """
    expected = names(spec, scheme)
    missing = [n for n, e in expected.items() if n not in raw.tensors and e.kind != "tracked"]
    unexpected = [n for n in raw.tensors if n not in expected]
    bad = [f"{n} {tuple(np.shape(raw.tensors[n]))} vs {e.shape}" for n, e in expected.items()
           if n in raw.tensors and e.kind != "tracked" and tuple(np.shape(raw.tensors[n])) != e.shape]
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


def _read_safetensors(path):
    from safetensors import safe_open

    try:
        with safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # SafetensorError: header or data not what it claims
        raise CheckpointError(f"{path}: cannot read as safetensors (truncated or not one: "
                              f"{_one_line(err, 100)})") from None
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


def _read_mindspore(path):
    import mindspore as ms

    try:
        params = ms.load_checkpoint(path)
    except Exception as err:  # ValueError / RuntimeError on a damaged or foreign file
        raise CheckpointError(f"{path}: cannot read as a MindSpore checkpoint (truncated or not one: "
                              f"{_one_line(err, 100)})") from None
    tensors, moments, scalars = {}, {}, {}
    for name, param in params.items():
        value = param.asnumpy() if hasattr(param, "asnumpy") else param
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


def atomic_write(path, write):
    """Call ``write(tmp_path)`` on a temporary file in ``path``'s folder, then rename it to ``path``."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CheckpointError(f"{path}: folder '{folder}' does not exist")
    # Same suffix: MindSpore appends '.ckpt' to any name that lacks it.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private; give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write(path, tensors, momentum=None, scalars=None):
    """Write ``tensors`` ({name: ndarray}, in order) to ``path`` in the format its extension names.

    ``momentum`` ({name: ndarray}, trainable tensors in model.parameters() order) and
    ``scalars`` (epoch, step, recipe, lr...) make it a training checkpoint as the
    trainers write them.
    """
    fmt = format_of(path)
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
        param_groups.append(dict(hyper, params=ids))
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
    ms.save_checkpoint(params, tmp, append_dict=append)
