"""PyTorch files (.pth, .pt, .bin): read with ``weights_only=True``, written byte-reproducibly.

A pickle that names any callable is refused before it is called. Tensors NumPy cannot
hold (float8, quantized, sparse, meta) are refused by name, and so is a tensor whose
view claims more bytes than its storage holds (a stride-0 view can describe terabytes
over four bytes): together the tensors never hold more bytes than the file.
"""
import os
import re
import warnings

from ..errors import CheckpointError
from .raw import RawCheckpoint, contiguous, one_line

NAME, LABEL = "torch", "PyTorch"
# Where timm's, torchrun's and our own training checkpoints keep the weights, in order of preference.
STATE_KEYS = ("state_dict", "model", "state_dict_ema")


def to_numpy(t, path="", key=""):
    """A NumPy view of a CPU tensor; bfloat16 widened to float32, which holds each value exactly."""
    import torch

    t = t.detach().cpu()
    try:
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    except (TypeError, RuntimeError, NotImplementedError):
        what = t.dtype if t.layout == torch.strided else t.layout
        raise CheckpointError(f"{path}: tensor '{one_line(key, 60)}' is {str(what).replace('torch.', '')}: "
                              f"NumPy cannot hold it (float8, quantized, sparse and meta tensors are refused)") from None


def _load(path):
    import pickle

    import torch

    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    try:
        # Deprecation notes from torch's own rebuild functions are not the user's to read.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # mmap: tensors stay in the page cache instead of being copied into the heap.
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: (?:GLOBAL )?([\w.]+)", str(err))
        what = f"would call or build {found.group(1)}" if found else \
            f"holds more than tensors ({one_line(str(err).strip().splitlines()[-1] if str(err).strip() else err)})"
        raise CheckpointError(f"{path}: refused: its pickle {what}; only tensors and plain containers "
                              f"are loaded, nothing in it was run") from None
    except MemoryError:
        raise CheckpointError(f"{path}: refused: it claims more memory than there is") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... on damaged files
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint (truncated or not one: "
                              f"{one_line(str(err) or type(err).__name__)})") from None


def read(path):
    import torch

    obj = _load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    holder = next((k for k in STATE_KEYS if isinstance(obj.get(k), dict)), None)
    state = obj[holder] if holder else obj
    others = {k: v for k, v in obj.items() if k != holder} if holder else {}
    tensors, total, limit = {}, 0, os.path.getsize(path)
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: key {one_line(repr(key), 40)} is a {type(key).__name__}, not a name")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry '{one_line(key, 60)}' is a {type(value).__name__}, not a tensor"
                                  + ("" if holder else f" (no {'/'.join(STATE_KEYS)} dict found)"))
        array = to_numpy(value, path, key)
        claim = value.numel() * value.element_size()  # as stored: before bfloat16 is widened
        held = value.untyped_storage().nbytes() - value.storage_offset() * value.element_size()
        total += claim
        if claim > max(held, 0) or total > limit:
            raise CheckpointError(f"{path}: tensor '{one_line(key, 60)}' claims {claim} bytes: more "
                                  f"than its storage or the file holds (an aliased or expanded view)")
        tensors[key] = array
    # DistributedDataParallel prefixes every name with 'module.'.
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    # Kept only when of the right type: a file's other keys are not ours to refuse weights over.
    scalars = {k: others[k] for k in ("epoch", "step") if type(others.get(k)) is int}
    if isinstance(others.get("recipe"), str):
        scalars["recipe"] = others["recipe"]
    return RawCheckpoint(path, NAME, tensors, others.get("optimizer"), scalars)


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
            state[i] = {"momentum_buffer": torch.from_numpy(contiguous(momentum[name]))}
        # param_names, as torch records them for named parameters: the file says which id is which.
        param_groups.append(dict(hyper, params=ids, param_names=list(names)))
        pid += len(names)
    return {"state": state, "param_groups": param_groups}


def write(tmp, tensors, momentum, scalars):
    import torch

    state = {k: torch.from_numpy(contiguous(v)) for k, v in tensors.items()}
    if momentum is None:
        obj = state
    else:
        obj = {"model": state, "optimizer": sgd_state(momentum, scalars["groups"]),
               "epoch": int(scalars["epoch"]), "step": int(scalars["step"])}
        if scalars.get("recipe") is not None:
            obj["recipe"] = str(scalars["recipe"])
    # A file object, not a name: torch names the zip's folder after the file it is given,
    # and the bytes must not depend on the (temporary) file name.
    with open(tmp, "wb") as f:
        torch.save(obj, f)
