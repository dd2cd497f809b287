"""The model registry: every YAML file in ``configs/models`` is a model."""
import os
from functools import lru_cache
from pathlib import Path

from .errors import SpecError
from .spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(os.environ.get("SKNET_CONFIG_DIR", ROOT / "configs"))
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
