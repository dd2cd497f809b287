"""Errors that reach the user as one line and a non-zero exit."""


class SKNetError(Exception):
    """Base class: the CLI prints ``str(err)`` on one line and exits 2."""


class SpecError(SKNetError):
    """A model spec or recipe that cannot be loaded: names the file and the key path."""

    def __init__(self, source, key, message):
        self.source, self.key = source, key
        where = f"{source}: " if source else ""
        at = f"'{key}': " if key else ""
        super().__init__(f"{where}{at}{message}")


class BackendMissing(SKNetError):
    """A backend was asked for whose framework is not installed."""

    def __init__(self, backend, module, extra):
        super().__init__(
            f"backend '{backend}' needs the '{module}' package: pip install 'sknet[{extra}]'")


class CheckpointError(SKNetError):
    """A checkpoint that cannot be read, converted or matched to a model."""


def describe_mismatch(missing=(), unexpected=(), shapes=(), limit=3):
    """'2 missing: a, b; 1 shape mismatch: c (3,) vs (4,)': the first few keys of each kind and a count."""
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        keys = list(keys)
        if keys:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:limit])}{more}")
    return "; ".join(parts)


def first_line(err, limit=300):
    """The first line of a framework's (often many-line) error message, for a one-line report."""
    text = str(err).strip().splitlines()
    return text[0][:limit] if text else type(err).__name__
