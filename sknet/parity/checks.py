"""The cross-backend checks: the same weights and inputs on PyTorch and MindSpore.

Each check builds fresh models from one canonical state (the converter's core: every
tensor goes through ``sknet.params`` names on both sides), runs the framework-side
code in ``backends.<framework>.probe`` and compares with PyTorch as the reference.
Tolerances are relative to the largest magnitude of each compared tensor; docs/parity.md
says why each is what it is.
"""
import math
import time
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from ..errors import SKNetError
from ..params import tensor_specs
from ..plan import build_plan
from .report import compare, compare_many, errors, skipped

TOLERANCES = {
    "eval": 1e-5,
    "train": 1e-4,
    "grad": 1e-4,
    "steps": 1e-4,
    # fp16's unit roundoff is 2**-11 = 4.9e-4; ~20 of them allow for the error growing
    # with depth (about sqrt(50) u for a 50-layer net) with a margin of 3 (docs/parity.md).
    "fp16": 1e-2,
    "onnx": 1e-5,
    "droppath": 1e-4,
}
CHECKS = ("eval", "train", "grad", "steps", "fp16", "onnx", "droppath")
DEFAULT_CHECKS = ("eval", "train", "grad", "steps")
# Warm-up, cosine decay, label smoothing and decay on BN and biases too: the most of
# the recipe machinery that ten steps can exercise.
DEFAULT_RECIPE = "mindcv_skresnet18"
MODES = ("pynative", "graph")
# The steps check's default input size, at most: its subject is the update rule and how
# each step's error feeds the next pass, which do not change with the image size, while
# the gradients at the spec's size are the grad check's. At 224 px its ten steps on three
# sides were two thirds of a run (docs/parity.md, "Cost").
STEPS_SIZE = 112


@dataclass(frozen=True)
class Setup:
    spec: object
    state: dict                       # canonical weights both sides start from
    ms_state: Optional[dict] = None   # MindSpore's own weights, when they come from another file
    batch: int = 8
    size: int = 224
    seed: int = 0
    mode: str = "pynative"
    recipe: str = DEFAULT_RECIPE
    steps: int = 10
    steps_per_epoch: int = 1000       # where in the recipe's schedule the steps sit (see sgd_plan)
    steps_size: Optional[int] = None  # input size of the steps check; None: min(size, STEPS_SIZE)
    residual_gamma: float = 0.25      # weight of each block's last BN in the default state (see make_setup)
    floor: bool = False               # also measure PyTorch fp32 against PyTorch fp64
    torch_fast: bool = False          # PyTorch's fast CPU paths instead of its module-by-module math
    drop_path_rate: float = 0.2       # stochastic depth of the droppath check

    @property
    def steps_pixels(self):
        """The input size of the steps check."""
        return self.steps_size or min(self.size, STEPS_SIZE)

    @property
    def mindspore_state(self):
        return self.state if self.ms_state is None else self.ms_state


def inputs(spec, batch, size, seed, index=0):
    """Batch ``index`` of images and uniform labels, the same on both sides.

    Standard-normal pixels times a per-image contrast in [0.5, 1.5], plus a per-image,
    per-channel brightness ~ N(0, 1): images that differ in their global statistics, as
    photos do. The SK attention and its BN see only globally pooled features, and for
    i.i.d. noise those are nearly the same for every image at 224 px, which makes their
    gradients cancellation residues (docs/parity.md, finding 1).
    """
    rng = np.random.default_rng([seed, index])
    c = spec.input.in_chans
    x = rng.standard_normal((batch, c, size, size))
    x = x * rng.uniform(0.5, 1.5, (batch, 1, 1, 1)) + rng.standard_normal((batch, c, 1, 1))
    y = rng.integers(0, spec.num_classes, batch).astype(np.int64)
    return x.astype(np.float32), y


def sides():
    """(sknet.backends.torch.probe, sknet.backends.mindspore.probe), each framework imported now."""
    import importlib

    from .. import backend_module

    backend_module("torch")
    backend_module("mindspore")
    return (importlib.import_module("sknet.backends.torch.probe"),
            importlib.import_module("sknet.backends.mindspore.probe"))


def set_mode(mode):
    """Put MindSpore in ``mode`` on the CPU; returns the mode it was in."""
    import mindspore as ms

    if mode not in MODES:
        raise SKNetError(f"unknown MindSpore mode '{mode}' (choose from: {', '.join(MODES)})")
    before = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    from sknet.backends.mindspore import use_device

    use_device("CPU")
    return before


def release():
    """Return the heap that freed tensors leave to the OS (glibc keeps it for reuse).

    PyTorch allocates through malloc, MindSpore from a pool of its own: without this, the
    memory a PyTorch pass freed stays resident while MindSpore's pass grows its pool beside
    it, and a run's peak is the sum of both sides' largest passes.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        # The process's own symbols: ctypes.util.find_library would fork a child the size of this process.
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        pass


def _floor(result, ref64, out32, many=False):
    """Attach how far PyTorch fp32 itself is from fp64 on the same check: the conditioning."""
    r = (compare_many if many else compare)("floor", ref64, out32, result.tol)
    result.details["fp32_vs_fp64"] = r.max_rel
    return result


def _stats(state):
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def check_eval(setup, tp, mp):
    x, _ = inputs(setup.spec, setup.batch, setup.size, setup.seed)
    ref, _ = tp.forward(tp.build(setup.spec, setup.state), x)
    out, _ = mp.forward(mp.build(setup.spec, setup.mindspore_state), x)
    result = compare("eval", ref, out, TOLERANCES["eval"], note="logits, inference mode")
    if setup.floor:
        _floor(result, tp.forward(tp.build(setup.spec, setup.state, "float64"), x)[0], ref)
    return [result]


def check_train(setup, tp, mp):
    x, _ = inputs(setup.spec, setup.batch, setup.size, setup.seed)
    ref, ref_state = tp.forward(tp.build(setup.spec, setup.state), x, train=True)
    out, out_state = mp.forward(mp.build(setup.spec, setup.mindspore_state), x, train=True)
    tol = TOLERANCES["train"]
    logits = compare("train", ref, out, tol, note="logits, BN batch statistics")
    stats = compare_many("train.bn_stats", _stats(ref_state), _stats(out_state), tol,
                         note="BN running mean/var after the pass")
    if setup.floor:
        ref64, state64 = tp.forward(tp.build(setup.spec, setup.state, "float64"), x, train=True)
        _floor(logits, ref64, ref)
        _floor(stats, _stats(state64), _stats(ref_state), many=True)
    return [logits, stats]


def check_droppath(setup, tp, mp):
    """A training pass with stochastic depth: both sides take the same decisions from
    ``sknet.stochastic.DropSource`` (seeded alike), so the logits and BN statistics agree."""
    spec = setup.spec.replace(drop_path_rate=setup.drop_path_rate)
    x, _ = inputs(spec, setup.batch, setup.size, setup.seed)
    t, m = tp.build(spec, setup.state), mp.build(spec, setup.mindspore_state)
    ref, ref_state = tp.forward(t, x, train=True)
    out, out_state = mp.forward(m, x, train=True)
    dropped = [t.drop_source.dropped, m.drop_source.dropped]
    branches = setup.batch * len(build_plan(spec).blocks)
    tol = TOLERANCES["droppath"]
    logits = compare("droppath", ref, out, tol, note=f"logits, training mode, drop_path_rate {setup.drop_path_rate}: "
                                                     f"{dropped[0]} of {branches} residual branches dropped")
    logits.details["dropped"] = dropped
    if dropped[0] != dropped[1]:
        logits.passed = False
        logits.note += f" on PyTorch, {dropped[1]} on MindSpore"
    stats = compare_many("droppath.bn_stats", _stats(ref_state), _stats(out_state), tol,
                         note="BN running mean/var after the pass")
    return [logits, stats]


def with_floor(name, ref, out, ref64, tol, note, scales=None):
    """Every tensor held to ``tol``, with how far PyTorch fp32 itself is from fp64 beside it.

    The floor is what no float32 implementation can beat; where it comes near ``tol`` the
    note says so, and the check's setup has to change (docs/parity.md), not the tolerance.
    """
    result = compare_many(name, ref, out, tol, note=note, scales=scales)
    floor = {k: errors(ref64[k], ref[k], (scales or {}).get(k))[1] for k in ref}
    result.details["fp32_vs_fp64"] = max(floor.values(), default=0.0)
    near = sorted(k for k in floor if floor[k] > tol / 10)
    if near:
        result.details["near_floor"] = {k: floor[k] for k in near}
        result.note += f"; PyTorch fp32 itself is > tol/10 from fp64 on {len(near)} tensors"
    return result


def unpinned(name, ref, out, ref64, note):
    """Each backend on its own discrete choices: reported, not judged (docs/parity.md, finding 8).

    Where a float32 pass rounds a ReLU input near zero to the other side, the gradient
    takes another linear piece of the network; how often that happens differs between any
    two float32 implementations, PyTorch's own ones included, so this row informs.
    """
    result = compare_many(name, ref, out, TOLERANCES["grad"], note=note)
    floor = compare_many("", ref64, ref, 1.0)
    result.passed = None
    result.details["fp32_vs_fp64"] = floor.max_rel
    result.note += f"; PyTorch fp32 vs fp64 on the same: {floor.max_rel:.1e} ({floor.worst}); informative"
    return result


def check_grad(setup, tp, mp):
    """Whole-network gradients, both sides on PyTorch fp64's ReLU signs and max-pool winners."""
    x, y = inputs(setup.spec, setup.batch, setup.size, setup.seed)
    t64 = tp.build(setup.spec, setup.state, "float64")
    with tp.record_choices(t64) as choices, tp.recomputed(t64):
        _, ref64 = tp.grads(t64, x, y)
    # Each model goes as soon as its gradients are out: SKNet-50's float64 one holds 0.4 GB.
    del t64
    t32 = tp.pin(tp.build(setup.spec, setup.state), choices)
    ref_loss, ref = tp.grads(t32, x, y)
    flips = tp.flips(t32)
    del t32
    # The unpinned PyTorch pass before MindSpore's first: MindSpore keeps its memory pool once
    # grown, and a PyTorch pass beside it made the check's peak (SKNet-50 at 224 px: 4.2 GiB).
    _, free = tp.grads(tp.build(setup.spec, setup.state), x, y)
    release()
    out_loss, out = mp.grads(mp.pin(mp.build(setup.spec, setup.mindspore_state), choices), x, y)
    result = with_floor("grad", ref, out, ref64, TOLERANCES["grad"],
                        note="d CE / d every parameter, per tensor, on PyTorch fp64's ReLU signs and pool winners")
    relu_inputs = sum(a.size for path, calls in choices.items() if path != "maxpool" for a in calls)
    result.details.update(loss=[ref_loss, out_loss], torch_fp32_flips=flips, relu_inputs=int(relu_inputs))
    del choices, out
    release()
    _, free_ms = mp.grads(mp.build(setup.spec, setup.mindspore_state), x, y)
    return [result, unpinned("grad.unpinned", free, free_ms, ref64,
                             note="each backend on its own ReLU signs and pool winners")]


def sgd_plan(setup):
    """(batches, lrs, weight decay per canonical name, momentum, nesterov, label smoothing)."""
    from ..recipe import load_recipe
    from ..schedule import learning_rates, weight_decay_of

    recipe = load_recipe(setup.recipe)
    # The first steps of a run with ``steps_per_epoch`` steps an epoch (at least enough
    # for ``steps`` in all): an ImageNet epoch at batch 64 is 20k steps; compressing the
    # warm-up to a step or two an epoch makes ten steps chaotic, PyTorch fp32 against
    # fp64 included (docs/parity.md), and then no two fp32 frameworks could agree.
    per_epoch = max(setup.steps_per_epoch, math.ceil(setup.steps / recipe.epochs))
    lrs = learning_rates(recipe, per_epoch, world_size=1)[: setup.steps]
    decay = {name: weight_decay_of(name, kind, recipe)
             for name, _, kind, trainable in tensor_specs(setup.spec) if trainable}
    batches = [inputs(setup.spec, setup.batch, setup.steps_pixels, setup.seed, index=1 + i) for i in range(setup.steps)]
    opt = recipe.optimizer
    return batches, lrs, decay, opt.momentum, opt.nesterov, recipe.label_smoothing


def check_steps(setup, tp, mp):
    plan = sgd_plan(setup)
    # The same steps in fp64 first: how far PyTorch's own fp32 is from exact, tensor by
    # tensor, and the ReLU signs of every step, which both fp32 runs replay (see check_grad).
    t64 = tp.build(setup.spec, setup.state, "float64")
    with tp.record_choices(t64) as choices:
        losses64, state64, _ = tp.sgd(t64, *plan, travel=False)
    del t64
    # GRAPH mode compiles one pass's signs into the graph: there each side keeps its own.
    pinned = setup.mode == "pynative"
    t32 = tp.build(setup.spec, setup.state)
    ref_losses, ref, travel = tp.sgd(tp.pin(t32, choices) if pinned else t32, *plan)
    del t32
    release()
    m32 = mp.build(setup.spec, setup.mindspore_state)
    out_losses, out, _ = mp.sgd(mp.pin(m32, choices) if pinned else m32, *plan)
    del m32, choices
    tol = TOLERANCES["steps"]
    what = f"{setup.steps} SGD steps of recipe {setup.recipe} at {setup.steps_pixels} px"
    losses = compare("steps.loss", ref_losses, out_losses, tol, note=f"loss at each of {what}")
    losses.worst = f"step {int(np.argmax(np.abs(ref_losses - out_losses)))}"
    losses.details.update(torch=ref_losses.tolist(), mindspore=out_losses.tolist(), lr=plan[1].tolist())
    _floor(losses, losses64, ref_losses)
    # Each tensor on the scale of max(|w|, sum over steps of |update|): a BN beta or bias
    # starts at zero and ends as a sum of updates of mixed sign.
    return [losses, with_floor("steps.weights", ref, out, state64, tol, scales=travel,
                               note=f"tensors after {what}, on the scale of max(|w|, sum |update|)")]


def check_fp16(setup, tp, mp):
    x, _ = inputs(setup.spec, setup.batch, setup.size, setup.seed)
    ref, _ = tp.forward(tp.build(setup.spec, setup.state, "float16"), x)
    out, _ = mp.forward(mp.build(setup.spec, setup.mindspore_state, "float16"), x)
    result = compare("fp16", ref, out, TOLERANCES["fp16"], note="logits, inference mode, fp16 weights and activations")
    # How far each side's fp16 is from its fp32: the cross-backend error should be of that size.
    ref32, _ = tp.forward(tp.build(setup.spec, setup.state), x)
    result.details["torch_fp16_vs_fp32"] = compare("", ref32, ref, 1).max_rel
    result.details["mindspore_fp16_vs_torch_fp32"] = compare("", ref32, out, 1).max_rel
    return [result]


def check_onnx(setup, tp, mp):
    tol = TOLERANCES["onnx"]
    try:
        import sknet.backends.onnx as bo
    except ImportError as err:
        return [skipped("onnx", tol, f"sknet.backends.onnx cannot be imported ({err})")]
    if not (hasattr(bo, "build_model") and hasattr(bo, "run")):
        return [skipped("onnx", tol, "sknet.backends.onnx has no build_model/run yet")]
    x, _ = inputs(setup.spec, setup.batch, setup.size, setup.seed)
    ref, _ = tp.forward(tp.build(setup.spec, setup.state), x)
    out = bo.run(bo.build_model(setup.spec, setup.state), x)
    return [compare("onnx", ref, out, tol, note="logits, ONNX Runtime CPU against PyTorch")]


RUNNERS = {"eval": check_eval, "train": check_train, "grad": check_grad, "steps": check_steps,
           "fp16": check_fp16, "onnx": check_onnx, "droppath": check_droppath}


def parse_checks(text):
    names = [c.strip() for c in text.split(",") if c.strip()]
    if names == ["all"]:
        return CHECKS
    unknown = [c for c in names if c not in CHECKS]
    if unknown or not names:
        raise SKNetError(f"unknown check '{(unknown or [text])[0]}' (choose from: {', '.join(CHECKS)}, or all)")
    return tuple(names)


# Input size from which ``run_checks(isolate="auto")`` gives each check a process of its own.
ISOLATE_FROM = 128


def run_checks(setup, checks=DEFAULT_CHECKS, isolate=False):
    """Every requested check on ``setup``; a list of ``Result`` rows in the order asked.

    ``isolate``: each check in a fresh (spawned) process. MindSpore keeps its CPU memory pool
    once grown, so in one process each check's PyTorch passes run beside what the previous
    checks' MindSpore passes took (SKNet-50 at 224 px: 4.4 GiB in one process, 3.3 GiB for the
    largest check alone; docs/parity.md, "Cost"), for ~4 s of imports per check. "auto":
    from ``ISOLATE_FROM`` px and more than one check.
    """
    if isolate == "auto":
        isolate = setup.size >= ISOLATE_FROM and len(checks) > 1
    if isolate:
        import multiprocessing

        results = []
        for name in checks:
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                results += pool.apply(_run_in_process, (setup, (name,)))
        return results
    return _run_in_process(setup, checks)


def _run_in_process(setup, checks):
    tp, mp = sides()
    before = set_mode(setup.mode)
    try:
        results = []
        for name in checks:
            start = time.perf_counter()
            with tp.math(setup.torch_fast):
                rows = RUNNERS[name](setup, tp, mp)
            # Where a run's time goes, check by check, on the first row each check gives.
            rows[0].details["seconds"] = round(time.perf_counter() - start, 2)
            results += rows
            release()
        return results
    finally:
        import mindspore as ms

        ms.set_context(mode=before)


def make_setup(spec, state=None, **kwargs):
    """A ``Setup`` whose weights are ``state`` or, by default, ``init_state(spec, seed, residual_gamma)``.

    The default scales each block's last BN to 0.25 (docs/parity.md, finding 8): at timm's
    1, SKNet-50's training is chaotic from the first steps, PyTorch fp32 against its own
    fp64 included, and no two float32 implementations could agree to the tolerances.
    """
    from ..params import init_state

    setup = Setup(spec=spec, state=state if state is not None else {}, **kwargs)
    if state is None:
        setup = replace(setup, state=init_state(spec, setup.seed, setup.residual_gamma))
    return setup
