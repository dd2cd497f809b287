"""Checkpoint conversion between formats (PyTorch, MindSpore, safetensors) and layouts.

``convert(src, dst)`` reads any supported file, finds its naming scheme from the keys
and its model from the keys and shapes (over the registry, unless ``model`` is given),
maps every tensor to its canonical name and writes it under the destination's scheme.
Values are copied as stored: no dtype change, no arithmetic, so a round trip through any
chain of formats and layouts gives back the same bits.
"""
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import checkpoint as ckpt
from .errors import CheckpointError, SKNetError, describe_mismatch
from .layouts import SCHEME_LABEL, TRACKED, detect_scheme, entries, scheme_for
from .params import tensor_specs
from .registry import get_spec, list_models

LAYOUTS = ("native", "timm", "mindcv")


@dataclass
class Report:
    src: str
    dst: str
    model: str
    src_format: str
    src_scheme: str
    dst_format: str
    dst_scheme: str
    tensors: int
    optimizer: bool
    seconds: float
    note: str = ""

    def __str__(self):
        fmt = ckpt.FORMAT_LABEL
        opt = " with optimizer state" if self.optimizer else ""
        return (f"{self.src} ({fmt[self.src_format]}, {SCHEME_LABEL[self.src_scheme]} names) -> "
                f"{self.dst} ({fmt[self.dst_format]}, {SCHEME_LABEL[self.dst_scheme]} names): "
                f"{self.model}, {self.tensors} tensors{opt} in {self.seconds:.2f} s{self.note}")


# ---------------------------------------------------------------- model detection


def _shape_of(raw, scheme, spec, canonical):
    """The shape the file gives the tensor ``canonical`` names in ``spec``, or None."""
    for e in entries(spec, scheme):
        if e.canonical == canonical:
            value = raw.tensors.get(e.name)
            return None if value is None else tuple(np.shape(value))
    return None


def _fitted(spec, raw, scheme):
    """``spec`` with num_classes / in_chans taken from the file's head and stem, when they differ."""
    fc = _shape_of(raw, scheme, spec, "fc.weight")
    stem = _shape_of(raw, scheme, spec, "conv1.weight")
    over = {}
    if fc and len(fc) == 2 and fc[0] != spec.num_classes and fc[0] >= 1:
        over["num_classes"] = fc[0]
    if stem and len(stem) == 4 and stem[1] != spec.input.in_chans and stem[1] >= 1:
        over["in_chans"] = stem[1]
    try:
        return spec.replace(**over) if over else spec
    except SKNetError:
        return spec


def detect_model(raw, scheme, model=None):
    """The spec the file's keys and shapes fit; ``model`` (name, alias or YAML) pins it.

    A file with another head or stem width than the registered model (a fine-tuned
    skresnet18 with 10 classes) fits that model with ``num_classes``/``in_chans`` replaced.
    Registered models with identical tensors (skresnet18 and mindcv_skresnet18) convert
    identically; a mindcv-layout file is then attributed to the mindcv_* model.
    """
    candidates = [get_spec(model)] if model else _registered()
    fits, closest = [], None
    for spec in candidates:
        spec = _fitted(spec, raw, scheme)
        missing, unexpected, bad = ckpt.mismatch(raw.tensors, spec, scheme)
        errors = len(missing) + len(unexpected) + len(bad)
        if errors == 0:
            fits.append(spec)
        elif closest is None or errors < closest[0]:
            closest = (errors, spec, missing, unexpected, bad)
    if not fits:
        _, spec, missing, unexpected, bad = closest
        what = f"does not fit model '{spec.name}'" if model else \
            f"fits no registered model (closest: '{spec.name}'; pass --model for your own spec)"
        raise CheckpointError(f"{raw.path} ({SCHEME_LABEL[scheme]} names) {what}: "
                              f"{describe_mismatch(missing, unexpected, bad)}")
    tensors = {tuple((e.name, e.shape) for e in entries(s, scheme)) for s in fits}
    if len(tensors) > 1:  # cannot happen with exact matching; kept so that it can never pass silently
        raise CheckpointError(f"{raw.path}: fits several models ({', '.join(s.name for s in fits)}): "
                              f"pass --model")
    prefer = [s for s in fits if s.name.startswith("mindcv_") == (scheme == "mindcv")]
    return (prefer or fits)[0]


@lru_cache(maxsize=1)
def _registered():
    return tuple(get_spec(n) for n in list_models())


# ---------------------------------------------------------------- optimizer state

SGD_DEFAULTS = {"lr": 0.0, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False,
                "maximize": False, "foreach": None, "differentiable": False, "fused": None}


def recipe_groups(spec, recipe):
    """[(SGD hyperparameters, [canonical names])] as the trainers group parameters for ``recipe``."""
    from .recipe import load_recipe
    from .schedule import param_groups, peak_lr

    r = load_recipe(recipe)
    o = r.optimizer
    return [(dict(SGD_DEFAULTS, lr=float(peak_lr(r)), momentum=o.momentum, nesterov=o.nesterov,
                  weight_decay=float(wd)), list(group)) for wd, group in param_groups(spec, r)]


def _hyper(group):
    return {k: v for k, v in group.items() if k not in ("params", "param_names")
            and isinstance(v, (int, float, bool, str, type(None)))}


def _torch_momentum(raw, spec, scheme, recipe=None):
    """Momentum by canonical name, and the param groups, of a PyTorch SGD state_dict.

    torch numbers parameters group after group. Which parameter an id is comes from the
    ``param_names`` torch records when the optimizer was built from named parameters;
    else, with one group, from model.parameters() order (the training contract); else
    from the recipe's grouping (``sknet.schedule.param_groups``), as the trainer built it.
    """
    opt = raw.optimizer
    if not isinstance(opt, dict) or not isinstance(opt.get("param_groups"), list) or "state" not in opt:
        raise CheckpointError(f"{raw.path}: 'optimizer' is not a torch.optim state_dict")
    trainable = [e for e in entries(spec, scheme) if e.trainable]
    by_name = {e.name: e for e in trainable}
    by_canonical = {e.canonical: e for e in trainable}
    groups = opt["param_groups"]
    ids = [i for g in groups for i in g["params"]]
    if len(ids) != len(trainable):
        raise CheckpointError(f"{raw.path}: optimizer holds {len(ids)} parameters, model "
                              f"'{spec.name}' has {len(trainable)} trainable tensors")
    if all(len(g.get("param_names", ())) == len(g["params"]) for g in groups):
        given = [n[len("module."):] if n.startswith("module.") else n for g in groups for n in g["param_names"]]
        unknown = [n for n in given if n not in by_name]
        if unknown:
            raise CheckpointError(f"{raw.path}: optimizer param_names not in model '{spec.name}': "
                                  f"{describe_mismatch(unexpected=unknown)}")
        order = [by_name[n] for n in given]
    elif len(groups) == 1:
        order = trainable
    else:
        recipe = recipe or raw.scalars.get("recipe")
        if not recipe:
            raise CheckpointError(f"{raw.path}: optimizer has {len(groups)} param groups and no param_names; "
                                  f"pass --recipe to say how the trainer grouped them")
        expected = recipe_groups(spec, recipe)
        sizes = [len(g["params"]) for g in groups]
        if sizes != [len(n) for _, n in expected]:
            raise CheckpointError(f"{raw.path}: optimizer groups of {sizes} parameters are not recipe "
                                  f"'{recipe}'s {[len(n) for _, n in expected]}")
        order = [by_canonical[n] for _, group in expected for n in group]
    other = sorted({k for st in opt["state"].values() for k in st if k != "momentum_buffer"})
    if other:
        raise CheckpointError(f"{raw.path}: optimizer state holds {', '.join(other[:3])}: not SGD with "
                              f"momentum, which is all --with-optimizer converts")
    momentum, bad = {}, []
    for pid, e in zip(ids, order):
        buf = opt["state"].get(pid, {}).get("momentum_buffer")
        # A parameter without a buffer has taken no step yet: SGD starts it from zeros.
        value = np.zeros(e.shape, np.float32) if buf is None else ckpt._torch_to_numpy(buf)
        if tuple(value.shape) != e.shape:
            bad.append(f"{e.name} {tuple(value.shape)} vs {e.shape}")
        momentum[e.canonical] = value
    if bad:
        raise CheckpointError(f"{raw.path}: optimizer buffers do not follow the model's parameters: "
                              f"{describe_mismatch(shapes=bad)}")
    out_groups, at = [], 0
    for g in groups:
        n = len(g["params"])
        out_groups.append((dict(SGD_DEFAULTS, **_hyper(g)), [e.canonical for e in order[at:at + n]]))
        at += n
    # Model order, whatever the group order: MindSpore's accumulators follow the parameters.
    return {e.canonical: momentum[e.canonical] for e in trainable}, out_groups


def _named_momentum(raw, spec, scheme, recipe=None):
    """Momentum by canonical name from MindSpore/safetensors 'moments.<name>' entries, and groups."""
    trainable = [e for e in entries(spec, scheme) if e.trainable]
    moments = raw.optimizer
    missing = [e.name for e in trainable if e.name not in moments]
    unexpected = [n for n in moments if n not in {e.name for e in trainable}]
    bad = [f"{e.name} {tuple(np.shape(moments[e.name]))} vs {e.shape}" for e in trainable
           if e.name in moments and tuple(np.shape(moments[e.name])) != e.shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"{raw.path}: momentum accumulators do not fit model '{spec.name}': "
                              f"{describe_mismatch(missing, unexpected, bad)}")
    hyper = dict(SGD_DEFAULTS)
    if "momentum" in raw.scalars:
        hyper["momentum"] = float(np.asarray(raw.scalars["momentum"]).reshape(-1)[0])
    lr = raw.scalars.get("learning_rate")
    if lr is not None:
        lr = np.asarray(lr).reshape(-1)
        at = int(np.asarray(raw.scalars.get("global_step", 0)).reshape(-1)[0])
        hyper["lr"] = float(lr[min(at, lr.size - 1)])
    recipe = recipe or raw.scalars.get("recipe")
    if recipe:
        groups = recipe_groups(spec, recipe)
        if lr is not None:
            for h, _ in groups:
                h["lr"] = hyper["lr"]
    else:
        groups = [(hyper, [e.canonical for e in trainable])]
    return {e.canonical: moments[e.name] for e in trainable}, groups


def train_state(raw, spec, scheme, recipe=None):
    """(momentum by canonical name in parameter order, scalars incl. param groups) of a training checkpoint."""
    if raw.optimizer is None:
        raise CheckpointError(f"{raw.path}: holds no optimizer state (not a training checkpoint); "
                              f"leave out --with-optimizer")
    missing = [k for k in ("epoch", "step") if k not in raw.scalars]
    if missing:
        raise CheckpointError(f"{raw.path}: training checkpoint lacks {', '.join(missing)}")
    read = _torch_momentum if raw.format == "torch" else _named_momentum
    momentum, groups = read(raw, spec, scheme, recipe)
    scalars = {k: raw.scalars[k] for k in ("epoch", "step", "recipe") if k in raw.scalars}
    if recipe:
        scalars["recipe"] = str(recipe)
    scalars["groups"] = groups
    return momentum, scalars


# ---------------------------------------------------------------- conversion


def layout_tensors(spec, scheme, weights, tracked=None):
    """{name in ``scheme``: array} in the framework's order; ``num_batches_tracked`` from ``tracked`` or 0."""
    out = {}
    for e in entries(spec, scheme):
        if e.kind == "tracked":
            bn = e.canonical[: -len(TRACKED) - 1]
            out[e.name] = np.array((tracked or {}).get(bn, 0), dtype=np.int64)
        else:
            out[e.name] = weights[e.canonical]
    return out


def convert(src, dst, model=None, layout="native", with_optimizer=False, recipe=None):
    """Convert checkpoint ``src`` into ``dst`` (format from its extension) in ``layout``.

    ``layout`` is native (the destination framework's own names), timm or mindcv;
    ``with_optimizer`` carries SGD momentum, epoch and step; ``recipe`` (name or path)
    says how the trainer grouped parameters, for PyTorch optimizer state written from a
    MindSpore file or read from one with several groups. Returns a ``Report``.
    """
    start = time.perf_counter()
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout '{layout}' (choose from: {', '.join(LAYOUTS)})")
    dst_format = ckpt.format_of(dst)
    raw = ckpt.read(src)
    scheme = detect_scheme(raw.tensors, str(src))
    spec = detect_model(raw, scheme, model)
    weights, tracked = ckpt.canonical_tensors(raw, spec, scheme)
    momentum = scalars = None
    dst_scheme = scheme_for(layout, dst_format)
    if with_optimizer:
        canonical_momentum, scalars = train_state(raw, spec, scheme, recipe)
        momentum, scalars = _renamed(spec, dst_scheme, canonical_momentum, scalars)
    out = layout_tensors(spec, dst_scheme, weights, tracked)
    ckpt.write(dst, out, momentum, scalars)
    note = ""
    if with_optimizer and dst_format == "torch" and raw.format != "torch" and not scalars.get("recipe"):
        note = " (one SGD param group: pass --recipe to group parameters as the trainer does)"
    return Report(str(src), str(dst), spec.name, raw.format, scheme, dst_format, dst_scheme, len(out),
                  with_optimizer, time.perf_counter() - start, note)


def export(spec, tensors, dst, layout="native", tracked=None, momentum=None, scalars=None):
    """Write a canonical state of ``spec`` (and optionally optimizer state) to ``dst`` in ``layout``."""
    dst_scheme = scheme_for(layout, ckpt.format_of(dst))
    expected = {name: shape for name, shape, _, _ in tensor_specs(spec)}
    missing = [n for n in expected if n not in tensors]
    unexpected = [n for n in tensors if n not in expected]
    bad = [f"{n} {tuple(np.shape(tensors[n]))} vs {expected[n]}" for n in expected
           if n in tensors and tuple(np.shape(tensors[n])) != expected[n]]
    if missing or unexpected or bad:
        raise CheckpointError(f"export of '{spec.name}': {describe_mismatch(missing, unexpected, bad)}")
    out = layout_tensors(spec, dst_scheme, tensors, tracked)
    if momentum is not None:
        scalars = dict(scalars or {})
        scalars.setdefault("groups", [(dict(SGD_DEFAULTS), list(momentum))])
        momentum, scalars = _renamed(spec, dst_scheme, momentum, scalars)
    ckpt.write(dst, out, momentum, scalars)
    return dst


def _renamed(spec, scheme, momentum, scalars):
    """Momentum and param groups keyed by canonical names, renamed into ``scheme``."""
    name = {e.canonical: e.name for e in entries(spec, scheme)}
    groups = [(hyper, [name[n] for n in group]) for hyper, group in scalars.get("groups", [])]
    return {name[k]: v for k, v in momentum.items()}, dict(scalars, groups=groups)

