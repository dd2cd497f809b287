"""The model registry: every YAML file in ``configs/models`` is a model.

The repository's ``configs/`` folder installs as the package ``sknet.configs`` (a wheel
carries it as package data); ``SKNET_CONFIG_DIR`` points the registry elsewhere.
"""
import os
from functools import lru_cache
from pathlib import Path

from .errors import SpecError
from .spec import load_spec


def _config_dir():
    if os.environ.get("SKNET_CONFIG_DIR"):
        return Path(os.environ["SKNET_CONFIG_DIR"])
    from importlib.resources import files

    try:
        return Path(str(files("sknet.configs")))
    except ModuleNotFoundError:  # a checkout on sys.path, not installed: the folder beside sknet/
        return Path(__file__).resolve().parent.parent / "configs"


CONFIG_DIR = _config_dir()
MODEL_DIR = CONFIG_DIR / "models"
RECIPE_DIR = CONFIG_DIR / "recipes"


@lru_cache(maxsize=None)
def _index():
    names, aliases = {}, {}
    for path in sorted(MODEL_DIR.glob("*.yaml")):
        spec = load_spec(path)
        if spec.name != path.stem:
            raise SpecError(str(path), "name", f"'{spec.name}' differs from the file name '{path.stem}'")
        names[spec.name] = path
        for alias in spec.aliases:
            aliases[alias] = spec.name
    return names, aliases


def list_models(include_aliases=False):
    names, aliases = _index()
    return sorted(names) + (sorted(aliases) if include_aliases else [])


def spec_path(name):
    names, aliases = _index()
    name = aliases.get(name, name)
    if name not in names:
        raise SpecError("", "", f"unknown model '{name}' (known: {', '.join(sorted(names))})")
    return names[name]


def get_spec(name_or_path, **overrides):
    """A spec by registered name or alias, or from a YAML path; ``overrides`` replace fields."""
    text = str(name_or_path)
    is_file = text.endswith((".yaml", ".yml")) or os.sep in text
    spec = load_spec(name_or_path if is_file else spec_path(text))
    return spec.replace(**overrides) if any(v is not None for v in overrides.values()) else spec
