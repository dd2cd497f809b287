"""SKNet from one spec: PyTorch modules, MindSpore cells and ONNX graphs.

``import sknet`` imports no framework; a backend's framework is imported when a model
is first built for it.
"""
from .errors import BackendMissing, CheckpointError, SKNetError, SpecError
from .registry import get_spec, list_models
from .spec import ModelSpec, load_spec

__version__ = "0.1.0"
__all__ = ["BackendMissing", "CheckpointError", "ModelSpec", "SKNetError", "SpecError",
           "create_model", "get_spec", "list_models", "load_spec", "backend_module"]

BACKENDS = {"torch": ("torch", "torch"), "mindspore": ("mindspore", "mindspore"),
            "onnx": ("onnx", "onnx")}


def backend_module(backend):
    """``backends.<backend>``, imported now; a missing framework raises BackendMissing."""
    import importlib

    if backend not in BACKENDS:
        raise SKNetError(f"unknown backend '{backend}' (choose from: {', '.join(BACKENDS)})")
    framework, extra = BACKENDS[backend]
    # The backend package first: it sets the framework's environment before importing it.
    try:
        return importlib.import_module(f"sknet.backends.{backend}")
    except ImportError as err:
        if (err.name or "").split(".")[0] == framework:
            raise BackendMissing(backend, framework, extra) from None
        raise


def create_model(name_or_spec, backend="torch", num_classes=None, checkpoint=None, seed=0, fast=None,
                 **overrides):
    """A ready model for a registered name, alias, spec path or ``ModelSpec``.

    Keywords are timm's (``sknet.spec.KEYWORDS``, each sets a spec field; an unknown one is
    an error naming it): ``num_classes`` (0: no head, pooled features), ``global_pool``
    ("avg" or "": unpooled maps), ``in_chans``, ``size``, ``drop_rate``, ``drop_path_rate``,
    ``features_only`` and ``out_indices`` (a backbone: a list of maps, ``feature_info``).
    With ``checkpoint`` (any format ``sknet convert`` reads) its weights are loaded; a whole
    classifier's checkpoint loads into a backbone or a headless model, its head ignored.
    ``seed`` draws the initial weights and stochastic depth's decisions.
    ``fast`` chooses the backend's speed-ups (``backends/<name>/fast.py``): None is the
    backend's default (PyTorch: the reference modules, which script, trace and compile;
    MindSpore: the options resolved for this device), True all that apply, False none.
    """
    if isinstance(name_or_spec, ModelSpec):
        spec = name_or_spec.replace(num_classes=num_classes, **overrides)
    else:
        spec = get_spec(name_or_spec, num_classes=num_classes, **overrides)
    module = backend_module(backend)
    model = module.build(spec, seed=seed, fast=fast)
    if checkpoint is not None:
        from .convert import read_for_model

        module.load_canonical(model, read_for_model(checkpoint, spec))
    return model
