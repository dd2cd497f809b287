"""The one comparison of a state against what a model expects: missing, unexpected, misshapen.

Every loader (checkpoint files, each backend's ``load_canonical``, ONNX export) calls
``check_state``, so a mismatch reads the same wherever it is found.
"""
import numpy as np

from .errors import CheckpointError, describe_mismatch


def shape_of(value):
    """The shape of an array, a framework tensor or parameter, or a shape given as a tuple."""
    if isinstance(value, tuple):
        return tuple(int(d) for d in value)
    shape = getattr(value, "shape", None)
    return tuple(int(d) for d in (shape if shape is not None else np.shape(value)))


def mismatch(expected, got, optional=()):
    """(missing, unexpected, ['name (got) vs (expected)']) of ``got`` against ``expected``.

    ``expected`` is {name: shape}; a shape of None is not compared. Names in ``optional``
    may be absent.
    """
    optional = set(optional)
    missing = [n for n in expected if n not in got and n not in optional]
    unexpected = [n for n in got if n not in expected]
    bad = []
    for n, shape in expected.items():
        if n in got and shape is not None and shape_of(got[n]) != tuple(shape):
            bad.append(f"{n} {shape_of(got[n])} vs {tuple(shape)}")
    return missing, unexpected, bad


def check_state(expected, got, source="", optional=()):
    """Raise a one-line CheckpointError, prefixed by ``source``, unless ``got`` fits ``expected``."""
    missing, unexpected, bad = mismatch(expected, got, optional)
    if missing or unexpected or bad:
        what = describe_mismatch(missing, unexpected, bad)
        raise CheckpointError(f"{source}: {what}" if source else what)


def warn(message):
    """A one-line warning on stderr: the value was taken, but the user should know."""
    import sys

    print(f"sknet: warning: {message}", file=sys.stderr)


def check_values(tensors, source, integer=(), allow_nonfinite=False, what="tensor"):
    """The rule for values: weights are floating point, names in ``integer`` are integers
    (num_batches_tracked), and NaN or Inf is refused unless ``allow_nonfinite`` (then warned).

    An int64 or bool weight would load into a float model only by a silent cast, and a
    NaN spreads through every logit: both mean a broken file, so neither passes unnoticed.
    """
    integer = set(integer)
    for name, value in tensors.items():
        dtype = np.asarray(value).dtype
        if name in integer:
            if dtype.kind not in "iu":
                raise CheckpointError(f"{source}: {what} '{name}' is {dtype}, not an integer")
        elif dtype.kind != "f":
            raise CheckpointError(f"{source}: {what} '{name}' is {dtype}: weights must be floating point "
                                  f"(integer, bool and complex weights are refused)")
    bad = [(n, v.size - int(np.count_nonzero(np.isfinite(v)))) for n, v in tensors.items()
           if n not in integer and not np.isfinite(v).all()]
    if not bad:
        return
    shown = ", ".join(f"{n} ({k} of {np.size(tensors[n])})" for n, k in bad[:3])
    more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
    many = len(bad) > 1
    message = f"{source}: {len(bad)} {what}{'s' if many else ''} hold{'' if many else 's'} NaN or Inf: {shown}{more}"
    if not allow_nonfinite:
        raise CheckpointError(f"{message}; pass --allow-nonfinite to take them as they are")
    warn(f"{message}; taken as they are (--allow-nonfinite)")
