"""Where two backends part ways: every stage of the forward pass compared, in order.

The probe points are derived from the module tree (``sknet.tree``): the stem, every
direct part of every block (its 1x1 convs, its downsample), every branch of every SK
unit, the SK unit's attention weights (B, M, C, 1, 1) and output, every block's output
and the logits. Each parameter tensor belongs to the first point (in the order the
forward pass reaches them) whose module holds it, so the first point that diverges
also names the tensors that can have caused it.
"""
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..tree import SKUnit, layers
from .report import errors


@dataclass(frozen=True)
class Point:
    label: str              # what the report prints
    module: str             # the module/cell whose output is recorded
    kind: str               # stem | conv | downsample | branch | attention | sk | block | logits
    owns: Tuple[str, ...]   # module paths whose parameters belong to this point


def probe_points(spec):
    """Probe points of ``spec`` in tree order (the report reorders them as they ran)."""
    items = layers(spec)
    sk_paths = {x.path for x in items if isinstance(x, SKUnit)}
    stem_layers = tuple(x.path for x in items if not x.path.startswith("layer") and x.path != "fc")
    points = [Point("stem", "maxpool", "stem", stem_layers + ("maxpool",))]
    blocks = []
    for x in items:
        parts = x.path.split(".")
        if parts[0].startswith("layer") and ".".join(parts[:2]) not in blocks:
            blocks.append(".".join(parts[:2]))
    for block in blocks:
        parts = []
        for x in items:
            if not x.path.startswith(block + "."):
                continue
            part = ".".join(x.path.split(".")[:3])
            if part not in parts:
                parts.append(part)
        for part in parts:
            if part in sk_paths:
                unit = next(x for x in items if isinstance(x, SKUnit) and x.path == part)
                for i in range(unit.num_branches):
                    points.append(Point(f"{part}.paths.{i}", f"{part}.paths.{i}", "branch", (f"{part}.paths.{i}",)))
                points.append(Point(f"{part}.attn", f"{part}.attn", "attention", (f"{part}.attn",)))
                points.append(Point(part, part, "sk", (part,)))
            else:
                kind = "downsample" if part.endswith("downsample") else "conv"
                points.append(Point(part, part, kind, (part,)))
        points.append(Point(block, block, "block", (block,)))
    points.append(Point("logits", "fc", "logits", ("fc",)))
    return points


def owned_tensors(spec, points):
    """{point label: canonical tensor names} with each tensor under the first point in ``points`` order."""
    from ..params import tensor_specs

    out = {p.label: [] for p in points}
    for name, *_ in tensor_specs(spec):
        for p in points:
            if any(name.startswith(prefix + ".") for prefix in p.owns):
                out[p.label].append(name)
                break
    return out


@dataclass
class LayerRow:
    label: str
    kind: str
    shape: tuple
    max_abs: float
    max_rel: float
    passed: bool


def layer_report(spec, torch_state, ms_state, x, tol):
    """(rows in the order the points ran, first diverging row or None, tensors it owns, differing weights).

    MindSpore runs in PYNATIVE mode here: forward hooks do not exist in GRAPH mode.
    """
    import mindspore as ms

    from .checks import sides

    tp, mp = sides()
    points = probe_points(spec)
    by_module = {p.module: p for p in points}
    before = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        ref = tp.capture(tp.build(spec, torch_state), x, list(by_module))
        # Module by module on both sides: fused paths skip the cells the hooks sit on.
        with mp.math(fast=False):
            out = mp.capture(mp.build(spec, ms_state), x, list(by_module))
    finally:
        ms.set_context(mode=before)
    # The order the forward pass reached them: a block's shortcut may run before its body.
    ordered = [by_module[m] for m in ref]
    owned = owned_tensors(spec, ordered)
    rows = []
    for p in ordered:
        abs_err, rel_err = errors(ref[p.module], out[p.module])
        rows.append(LayerRow(p.label, p.kind, tuple(ref[p.module].shape), abs_err, rel_err, bool(rel_err <= tol)))
    first = next((r for r in rows if not r.passed), None)
    suspects = owned[first.label] if first else []
    differing = [k for k in torch_state if not np.array_equal(torch_state[k], ms_state[k])]
    return rows, first, suspects, differing


def format_layers(rows, first, suspects, differing, tol):
    lines = [f"per-layer divergence (eval mode, relative to each output's largest magnitude, tol {tol:.0e}):"]
    width = max(len(r.label) for r in rows)
    for r in rows:
        mark = "  <-- first divergence" if r is first else ""
        lines.append(f"  {r.label.ljust(width)}  {r.kind:<10} {str(r.shape):<20} "
                     f"abs {r.max_abs:.3e}  rel {r.max_rel:.3e}  {'ok' if r.passed else 'DIFF'}{mark}")
    if first is None:
        lines.append("no divergence past tolerance")
    else:
        lines.append(f"first divergence: {first.label} ({first.kind}); its own tensors: "
                     f"{', '.join(suspects) or 'none'}")
    if differing:
        more = f" (+{len(differing) - 5} more)" if len(differing) > 5 else ""
        lines.append(f"weights that differ between the two sides: {', '.join(differing[:5])}{more}")
    return "\n".join(lines)


def layers_json(rows, first, suspects, differing, tol):
    return {"tol": tol, "first_divergence": first.label if first else None, "suspects": suspects,
            "differing_weights": differing,
            "points": [{"name": r.label, "kind": r.kind, "shape": list(r.shape), "max_abs": r.max_abs,
                        "max_rel": r.max_rel, "passed": r.passed} for r in rows]}
