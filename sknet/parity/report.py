"""Compare two arrays the way every parity check does, and print the results.

An error is measured relative to the largest magnitude of the reference tensor
(PyTorch's), not element by element: activations and gradients hold many values near
zero whose relative error means nothing, while the largest value sets the scale at
which a real difference would show.
"""
import json
import resource
import sys
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np


@dataclass
class Result:
    name: str
    max_abs: float
    max_rel: float
    tol: float
    passed: Optional[bool]
    # Where the worst error sits (a tensor name or a step) and anything a reader needs.
    worst: str = ""
    note: str = ""
    details: dict = field(default_factory=dict)


def errors(ref, out, scale=None):
    """(max absolute error, max absolute error / scale) of ``out`` against ``ref``.

    ``scale`` defaults to max |ref|; a larger one is given where the values were summed
    from larger terms (the weights after SGD steps), as a summation's error bound says.
    """
    ref = np.asarray(ref, np.float64)
    out = np.asarray(out, np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {out.shape}")
    if not np.all(np.isfinite(out)):
        return float("inf"), float("inf")
    diff = float(np.abs(ref - out).max()) if ref.size else 0.0
    own = float(np.abs(ref).max()) if ref.size else 0.0
    scale = own if scale is None else max(own, float(scale))
    if scale == 0.0:
        # An all-zero reference: any difference at all is a full-size error.
        return diff, (0.0 if diff == 0.0 else float("inf"))
    return diff, diff / scale


def compare(name, ref, out, tol, note=""):
    """One check over one pair of tensors."""
    abs_err, rel_err = errors(ref, out)
    return Result(name, abs_err, rel_err, tol, bool(rel_err <= tol), note=note)


def compare_many(name, refs, outs, tol, note="", scales=None):
    """One check over named pairs, each judged on its own scale; the worst one is reported."""
    missing = sorted(set(refs) ^ set(outs))
    if missing:
        raise ValueError(f"{name}: tensors on one side only: {', '.join(missing[:3])}")
    scales = scales or {}
    per = {k: errors(refs[k], outs[k], scales.get(k)) for k in refs}
    worst = max(per, key=lambda k: per[k][1]) if per else ""
    max_abs = max((a for a, _ in per.values()), default=0.0)
    max_rel = per[worst][1] if per else 0.0
    failed = sorted(k for k, (_, r) in per.items() if not r <= tol)
    details = {"tensors": len(per), "failed": failed[:10], "num_failed": len(failed)}
    return Result(name, max_abs, max_rel, tol, not failed, worst=worst, note=note, details=details)


def skipped(name, tol, reason):
    return Result(name, float("nan"), float("nan"), tol, None, note=reason)


def status(result):
    """pass/FAIL; a row with no verdict is "info" when it measured something, else "skip"."""
    if result.passed is None:
        return "skip" if result.max_rel != result.max_rel else "info"
    return "pass" if result.passed else "FAIL"


def table(results, title=""):
    rows = [("check", "max abs", "max rel", "tol", "result", "worst / note")]
    for r in results:
        where = "; ".join(x for x in (r.worst, r.note) if x)
        rows.append((r.name, _num(r.max_abs), _num(r.max_rel), f"{r.tol:.0e}", status(r), where))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [title] if title else []
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row[:5], widths)) + "  " + row[5])
    return "\n".join(lines)


def _num(x):
    return "-" if x != x else f"{x:.3e}"


def to_json(results, **context):
    def clean(r):
        d = asdict(r)
        for key in ("max_abs", "max_rel"):
            # JSON has no NaN/inf: a skipped check has no error, a non-finite one an unbounded one.
            if d[key] != d[key]:
                d[key] = None
            elif d[key] == float("inf"):
                d[key] = "inf"
        return d

    failed = [r.name for r in results if r.passed is False]
    return json.dumps({**context, "passed": not failed, "failed": failed,
                       "checks": [clean(r) for r in results]}, indent=2)


def cost(started):
    """{wall_s, peak_rss_mib, peak_rss_children_mib} since ``started`` (a ``time.perf_counter()``).

    Peak resident memory is the kernel's high-water mark (``ru_maxrss``) of this process
    and, separately, of the largest child it waited for: what a run needs of the machine.
    """
    import time

    # ru_maxrss is KiB on Linux and bytes on macOS.
    unit = 1 if sys.platform == "darwin" else 1024
    peak = {who: resource.getrusage(who).ru_maxrss * unit / 2 ** 20
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)}
    return {"wall_s": round(time.perf_counter() - started, 1),
            "peak_rss_mib": round(peak[resource.RUSAGE_SELF]),
            "peak_rss_children_mib": round(peak[resource.RUSAGE_CHILDREN])}


def format_cost(c):
    return (f"wall {c['wall_s']:.1f} s, peak RSS {c['peak_rss_mib']} MiB"
            f" (children {c['peak_rss_children_mib']} MiB)")
