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

from . import formats
from .errors import CheckpointError, SKNetError, describe_mismatch
from .layouts import SCHEME_LABEL, TRACKED, detect_scheme, entries, names, scheme_for
from .params import tensor_specs
from .registry import get_spec, list_models
from .statecheck import check_state, check_values, mismatch, warn

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
        fmt = formats.label
        opt = " with optimizer state" if self.optimizer else ""
        return (f"{self.src} ({fmt(self.src_format)}, {SCHEME_LABEL[self.src_scheme]} names) -> "
                f"{self.dst} ({fmt(self.dst_format)}, {SCHEME_LABEL[self.dst_scheme]} names): "
                f"{self.model}, {self.tensors} tensors{opt} in {self.seconds:.2f} s{self.note}")


# ---------------------------------------------------------------- a file's state under a spec


def _expected(spec, scheme):
    """({name: shape}, optional names) of ``spec`` under ``scheme``: ``num_batches_tracked`` may
    be absent (only PyTorch files have it) and its shape is not compared (0-d or (1,))."""
    expected = names(spec, scheme)
    return ({n: None if e.kind == "tracked" else e.shape for n, e in expected.items()},
            [n for n, e in expected.items() if e.kind == "tracked"])


def canonical_tensors(raw, spec, scheme, allow_nonfinite=False):
    """(canonical weights, {bn path: num_batches_tracked} or None) of ``raw`` under ``scheme``.

    Every tensor of ``spec`` must be there with its shape and nothing else may be; the
    values must pass ``check_values`` (floating point weights, finite unless allowed).
    """
    shapes, tracked_names = _expected(spec, scheme)
    check_state(shapes, raw.tensors, f"{raw.path}: does not fit model '{spec.name}'", tracked_names)
    check_values(raw.tensors, raw.path, tracked_names, allow_nonfinite)
    expected = names(spec, scheme)
    by_canonical, tracked = {}, {}
    for n, e in expected.items():
        if e.kind == "tracked":
            if n in raw.tensors:
                value = np.asarray(raw.tensors[n]).reshape(-1)
                if value.size != 1:
                    raise CheckpointError(f"{raw.path}: '{n}' holds {value.size} values, not one count")
                tracked[e.canonical[: -len(TRACKED) - 1]] = int(value[0])
        else:
            by_canonical[e.canonical] = raw.tensors[n]
    weights = {name: by_canonical[name] for name, *_ in tensor_specs(spec)}  # canonical order
    return weights, (tracked or None)


def _state(raw, spec, allow_nonfinite):
    """``{canonical name: ndarray}`` for ``spec`` from a file already read, in any layout."""
    if raw.format == "caffe":
        weights = formats.caffe.canonical(raw, spec)
        check_values(weights, raw.path, (), allow_nonfinite)
        return weights
    scheme = detect_scheme(raw.tensors, raw.path)
    return canonical_tensors(raw, spec, scheme, allow_nonfinite)[0]


def read_canonical(path, spec, allow_nonfinite=False):
    """``{canonical name: ndarray}`` for ``spec`` from any supported file in any layout."""
    return _state(formats.read(path), spec, allow_nonfinite)


def read_for_model(path, spec, allow_nonfinite=False):
    """``read_canonical`` for a model that may be a part of its classifier (a backbone, or no
    head): the whole classifier's checkpoint loads too, and the tensors the model has no
    place for (the head, a backbone's later stages) are left out, said once on stderr."""
    raw = formats.read(path)
    full = spec.classifier()
    if full == spec:
        return _state(raw, spec, allow_nonfinite)
    if raw.format != "caffe":  # a Caffe file always holds the whole classifier
        scheme = detect_scheme(raw.tensors, raw.path)
        shapes, optional = _expected(spec, scheme)
        if not any(mismatch(shapes, raw.tensors, optional)):
            return canonical_tensors(raw, spec, scheme, allow_nonfinite)[0]
        full = _fitted(full, raw, scheme)
    tensors = _state(raw, full, allow_nonfinite)
    wanted = [name for name, *_ in tensor_specs(spec)]
    left = [name for name in tensors if name not in set(wanted)]
    shown = ", ".join(left[:3]) + (f" (+{len(left) - 3} more)" if len(left) > 3 else "")
    warn(f"{path}: {len(left)} tensors of the whole model are not in '{spec.name}' "
         f"({'backbone' if spec.features.only else 'no classifier'}) and are ignored: {shown}")
    return {name: tensors[name] for name in wanted}


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
        shapes, optional = _expected(spec, scheme)
        missing, unexpected, bad = mismatch(shapes, raw.tensors, optional)
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
    # Replicas of another library's model share tensors with ours: a file in mindcv's layout
    # goes to the mindcv_* replica, any other to our model (timm's), never to a *_caffe
    # replica, whose input convention a .caffemodel alone implies.
    origin = "mindcv" if scheme == "mindcv" else ""
    prefer = [s for s in fits if _replica_of(s) == origin]
    return (prefer or fits)[0]


def _replica_of(spec):
    """Which library's model a registered spec replicates ('' for ours), from its name."""
    return next((lib for lib in ("mindcv", "caffe") if lib in spec.name.split("_")), "")


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
    _check_sgd_state(raw.path, opt)
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
        if len(set(given)) != len(given):
            raise CheckpointError(f"{raw.path}: optimizer param_names name a parameter twice")
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
    buffers = {}
    for pid, e in zip(ids, order):
        buf = opt["state"].get(pid, {}).get("momentum_buffer")
        # A parameter without a buffer has taken no step yet: SGD starts it from zeros.
        buffers[e.name] = np.zeros(e.shape, np.float32) if buf is None else \
            formats.torch.to_numpy(buf, raw.path, f"optimizer state {pid}")
    check_state({e.name: e.shape for e in order}, buffers,
                f"{raw.path}: optimizer buffers do not follow the model's parameters")
    momentum = {e.canonical: buffers[e.name] for e in order}
    out_groups, at = [], 0
    for g in groups:
        n = len(g["params"])
        out_groups.append((dict(SGD_DEFAULTS, **_hyper(g)), [e.canonical for e in order[at:at + n]]))
        at += n
    # Model order, whatever the group order: MindSpore's accumulators follow the parameters.
    return {e.canonical: momentum[e.canonical] for e in trainable}, out_groups


def _check_sgd_state(path, opt):
    """One line, before any use, for an optimizer state that is not torch.optim's shape."""
    import torch

    def is_list_of(value, kind):
        return isinstance(value, list) and all(isinstance(v, kind) for v in value)

    groups = opt.get("param_groups") if isinstance(opt, dict) else None
    state = opt.get("state") if isinstance(opt, dict) else None
    fine = isinstance(groups, list) and isinstance(state, dict)
    for g in groups if fine else ():
        fine = fine and isinstance(g, dict) and is_list_of(g.get("params"), int) \
            and is_list_of(g.get("param_names", []), str)
    for entry in state.values() if fine else ():
        fine = fine and isinstance(entry, dict) and all(isinstance(k, str) for k in entry) \
            and isinstance(entry.get("momentum_buffer", torch.zeros(0)), torch.Tensor)
    if not fine:
        raise CheckpointError(f"{path}: 'optimizer' is not a torch.optim state_dict")


def _named_momentum(raw, spec, scheme, recipe=None):
    """Momentum by canonical name from MindSpore/safetensors 'moments.<name>' entries, and groups."""
    trainable = [e for e in entries(spec, scheme) if e.trainable]
    moments = raw.optimizer
    check_state({e.name: e.shape for e in trainable}, moments,
                f"{raw.path}: momentum accumulators do not fit model '{spec.name}'")
    hyper = dict(SGD_DEFAULTS)
    if "momentum" in raw.scalars:
        hyper["momentum"] = _scalar(raw, "momentum", float)
    lr = raw.scalars.get("learning_rate")
    if lr is not None:
        lr = np.asarray(lr).reshape(-1)
        at = _scalar(raw, "global_step", int) if "global_step" in raw.scalars else 0
        if lr.size == 0 or lr.dtype.kind != "f" or at < 0:
            raise CheckpointError(f"{raw.path}: 'learning_rate' ({lr.size} values of {lr.dtype}) at "
                                  f"global_step {at} is not a learning rate")
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


def _scalar(raw, key, kind):
    value = np.asarray(raw.scalars[key]).reshape(-1)
    if value.size != 1 or value.dtype.kind not in "iuf":
        raise CheckpointError(f"{raw.path}: '{key}' is {formats.raw.one_line(repr(raw.scalars[key]), 40)}, "
                              f"not one number")
    return kind(value[0])


def train_state(raw, spec, scheme, recipe=None, allow_nonfinite=False):
    """(momentum by canonical name in parameter order, scalars incl. param groups) of a training checkpoint."""
    if raw.optimizer is None:
        raise CheckpointError(f"{raw.path}: holds no optimizer state (not a training checkpoint); "
                              f"leave out --with-optimizer")
    missing = [k for k in ("epoch", "step") if k not in raw.scalars]
    if missing:
        raise CheckpointError(f"{raw.path}: training checkpoint lacks {', '.join(missing)}")
    read = _torch_momentum if raw.format == "torch" else _named_momentum
    momentum, groups = read(raw, spec, scheme, recipe)
    check_values(momentum, raw.path, (), allow_nonfinite, what="momentum buffer")
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


def convert(src, dst, model=None, layout="native", with_optimizer=False, recipe=None, allow_nonfinite=False):
    """Convert checkpoint ``src`` into ``dst`` (format from its extension) in ``layout``.

    ``layout`` is native (the destination framework's own names), timm or mindcv;
    ``with_optimizer`` carries SGD momentum, epoch and step; ``recipe`` (name or path)
    says how the trainer grouped parameters, for PyTorch optimizer state written from a
    MindSpore file or read from one with several groups; ``allow_nonfinite`` converts NaN
    and Inf values with a warning instead of refusing them. Returns a ``Report``.
    """
    start = time.perf_counter()
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout '{layout}' (choose from: {', '.join(LAYOUTS)})")
    dst_format = formats.format_of(dst)
    raw = formats.read(src)
    if raw.format == "caffe":
        return _from_caffe(raw, dst, dst_format, model, layout, with_optimizer, allow_nonfinite, start)
    scheme = detect_scheme(raw.tensors, str(src))
    spec = detect_model(raw, scheme, model)
    weights, tracked = canonical_tensors(raw, spec, scheme, allow_nonfinite)
    momentum = scalars = None
    dst_scheme = scheme_for(layout, dst_format)
    if with_optimizer:
        canonical_momentum, scalars = train_state(raw, spec, scheme, recipe, allow_nonfinite)
        momentum, scalars = _renamed(spec, dst_scheme, canonical_momentum, scalars)
    out = layout_tensors(spec, dst_scheme, weights, tracked)
    formats.write(dst, out, momentum, scalars)
    note = ""
    if with_optimizer and dst_format == "torch" and raw.format != "torch" and not scalars.get("recipe"):
        note = " (one SGD param group: pass --recipe to group parameters as the trainer does)"
    return Report(str(src), str(dst), spec.name, raw.format, scheme, dst_format, dst_scheme, len(out),
                  with_optimizer, time.perf_counter() - start, note)


def _from_caffe(raw, dst, dst_format, model, layout, with_optimizer, allow_nonfinite, start):
    """A ``.caffemodel`` to ``dst``: the model is ``model`` or the registered *_caffe model
    (else any bottleneck model) whose Caffe layout the file fits."""
    if with_optimizer:
        raise CheckpointError(f"{raw.path}: a .caffemodel holds weights only; leave out --with-optimizer")
    if model:
        spec = get_spec(model)
    else:
        fits = [s for s in _registered() if s.block.type == "bottleneck" and not formats.caffe.fault(raw, s)]
        if not fits:
            raise CheckpointError(f"{raw.path}: fits no registered model's Caffe layout (pass --model, "
                                  f"e.g. sknet50_caffe, to name the first layer at fault)")
        spec = sorted(fits, key=lambda s: not s.name.endswith("_caffe"))[0]
    weights = formats.caffe.canonical(raw, spec)
    check_values(weights, raw.path, (), allow_nonfinite)
    dst_scheme = scheme_for(layout, dst_format)
    out = layout_tensors(spec, dst_scheme, weights)
    formats.write(dst, out)
    return Report(raw.path, str(dst), spec.name, raw.format, "caffe", dst_format, dst_scheme, len(out),
                  False, time.perf_counter() - start)


def export(spec, tensors, dst, layout="native", tracked=None, momentum=None, scalars=None):
    """Write a canonical state of ``spec`` (and optionally optimizer state) to ``dst`` in ``layout``."""
    dst_scheme = scheme_for(layout, formats.format_of(dst))
    check_state({name: shape for name, shape, _, _ in tensor_specs(spec)}, tensors, f"export of '{spec.name}'")
    out = layout_tensors(spec, dst_scheme, tensors, tracked)
    if momentum is not None:
        scalars = dict(scalars or {})
        scalars.setdefault("groups", [(dict(SGD_DEFAULTS), list(momentum))])
        momentum, scalars = _renamed(spec, dst_scheme, momentum, scalars)
    formats.write(dst, out, momentum, scalars)
    return dst


def _renamed(spec, scheme, momentum, scalars):
    """Momentum and param groups keyed by canonical names, renamed into ``scheme``."""
    name = {e.canonical: e.name for e in entries(spec, scheme)}
    groups = [(hyper, [name[n] for n in group]) for hyper, group in scalars.get("groups", [])]
    return {name[k]: v for k, v in momentum.items()}, dict(scalars, groups=groups)

