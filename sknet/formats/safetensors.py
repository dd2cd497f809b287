"""safetensors files, read and written through the ``safetensors`` library.

The library validates the header before any tensor is read: offsets are integers inside
the file, entries neither overlap nor leave gaps, shape products are overflow-checked,
``__metadata__`` maps strings to strings, and the header is at most 100 MB.
"""
import json

import numpy as np

from ..errors import CheckpointError
from .raw import MOMENTS, RawCheckpoint, contiguous, one_line, scalar_int

NAME, LABEL = "safetensors", "safetensors"


def _bfloat16(path, f, keys):
    """NumPy has no bfloat16, so the library cannot hand one out: these bytes are read by hand,
    at the offsets of the header it has already validated, and widened to float32 (exact)."""
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
    out = {}
    for key in keys:
        begin, stop = header[key]["data_offsets"]
        f.seek(8 + n + begin)
        raw = np.frombuffer(f.read(stop - begin), "<u2")
        out[key] = (raw.astype(np.uint32) << 16).view(np.float32).reshape(header[key]["shape"])
    return out


def _open(safe_open, path):
    try:  # pread: each tensor read once into its array, no mapped file pages counted beside it
        return safe_open(path, framework="np", backend="pread")
    except TypeError:  # safetensors < 0.8 only maps the file
        return safe_open(path, framework="np")


def read(path):
    from safetensors import SafetensorError, safe_open

    try:
        with _open(safe_open, path) as st:
            meta = st.metadata() or {}
            keys = list(st.keys())
            kinds = {k: st.get_slice(k).get_dtype() for k in keys}
            odd = [k for k in keys if kinds[k] not in _NUMPY]
            if odd:
                k = odd[0]
                raise CheckpointError(f"{path}: tensor '{one_line(k, 60)}' is {kinds[k]}: "
                                      f"NumPy cannot hold it (float8 and other exotic types are refused)")
            tensors = {k: st.get_tensor(k) for k in keys if kinds[k] != "BF16"}
        if "BF16" in kinds.values():
            with open(path, "rb") as f:
                wide = _bfloat16(path, f, [k for k in keys if kinds[k] == "BF16"])
            tensors = {k: tensors[k] if k in tensors else wide[k] for k in keys}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: cannot read as safetensors (truncated or not one: "
                              f"{one_line(str(err).replace('Error while deserializing header: ', ''))})") from None
    moments = {k[len(MOMENTS):]: tensors.pop(k) for k in list(tensors) if k.startswith(MOMENTS)}
    scalars = {key: scalar_int(path, f"metadata {key}", meta[key]) for key in ("epoch", "step") if key in meta}
    if "recipe" in meta:
        scalars["recipe"] = meta["recipe"]
    return RawCheckpoint(path, NAME, tensors, moments or None, scalars)


_NUMPY = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL", "C64"}


def write(tmp, tensors, momentum, scalars):
    from safetensors.numpy import save_file

    out = {k: contiguous(v) for k, v in tensors.items()}
    meta = {"format": "pt"}
    if momentum is not None:
        out.update({MOMENTS + k: contiguous(v) for k, v in momentum.items()})
        meta.update(epoch=str(int(scalars["epoch"])), step=str(int(scalars["step"])))
        if scalars.get("recipe") is not None:
            meta["recipe"] = str(scalars["recipe"])
    save_file(out, tmp, metadata=meta)
