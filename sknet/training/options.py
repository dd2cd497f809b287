"""What a run is asked to do: the command line's choices and the recipe, spec and data they give."""
from dataclasses import dataclass
from pathlib import Path

from .failure import TrainError


@dataclass(frozen=True)
class Options:
    """Command-line choices layered over the recipe (None: the recipe's value)."""
    recipe: str
    backend: str = "torch"
    device: str = None
    resume: str = None
    out: str = None
    epochs: int = None
    max_steps: int = None
    subset: int = None
    val_subset: int = None
    ckpt_every: int = None
    seed: int = None
    quiet: bool = False
    # ((dotted recipe key, YAML value), ...) from --set KEY=VALUE
    sets: tuple = ()


def default_out(recipe, backend):
    return Path("runs") / f"{recipe.name}-{backend}"


def load_run(opts):
    """(recipe, spec, train set, val set) for ``opts``: the recipe with the command line's overrides."""
    from ..data import build_dataset
    from ..recipe import load_recipe

    overrides = {}
    if opts.epochs is not None:
        overrides["epochs"] = opts.epochs
    if opts.seed is not None:
        overrides["seed"] = opts.seed
    overrides.update(dict(opts.sets))
    if opts.epochs is not None and opts.epochs <= 0:
        raise TrainError(f"--epochs must be >= 1, got {opts.epochs}")
    recipe = load_recipe(opts.recipe)
    if overrides:
        # A shorter run keeps the recipe's warm-up only if it still fits.
        if "epochs" in overrides and "schedule.warmup_epochs" not in overrides \
                and recipe.schedule.warmup_epochs >= overrides["epochs"]:
            overrides["schedule.warmup_epochs"] = 0.0
        recipe = recipe.replace(overrides)
    spec = recipe.model_spec()
    train = build_dataset(recipe, spec, "train")
    val = build_dataset(recipe, spec, "val")
    if opts.subset:
        train = train.subset(opts.subset)
    if opts.val_subset:
        val = val.subset(opts.val_subset)
    return recipe, spec, train, val
