"""Train a recipe: ``python -m sknet.train --config R --backend torch|mindspore``.

The same command trains in one process, under ``torchrun --nproc_per_node=N -m sknet.train``
(PyTorch DistributedDataParallel) and under ``msrun --worker_num=N --local_worker_num=N
--join=True python -m sknet.train ... --backend mindspore`` (MindSpore data parallel).
Exit statuses follow sknet.exits, as ``sknet train``: 2 for bad input, 1 (with a one-line
reason naming the last good checkpoint) for a run that fails while running.
"""
import argparse
import sys

from .exits import run_command
from .training import Options


def add_arguments(p):
    p.add_argument("--config", "--recipe", dest="recipe", required=True,
                   help="recipe name (configs/recipes/<name>.yaml) or path to a recipe YAML")
    p.add_argument("--backend", choices=["torch", "mindspore"], default="torch")
    p.add_argument("--device", help="cpu | cuda (torch) | CPU | GPU | Ascend (mindspore); default: the recipe's")
    p.add_argument("--resume", help="'auto' (OUT/last if present) or a checkpoint path of this backend")
    p.add_argument("--out", help="run folder (default: runs/<recipe>-<backend>)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (the schedule follows)")
    p.add_argument("--max-steps", type=int, help="stop after this many global optimizer steps")
    p.add_argument("--subset", type=int, help="train on the first N images only")
    p.add_argument("--val-subset", type=int, help="validate on the first N images only")
    p.add_argument("--ckpt-every", type=int, help="write OUT/last every K steps (default: about 10 %% of an epoch)")
    p.add_argument("--seed", type=int, help="override the recipe's seed")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field by its dotted key, value in YAML (e.g. data.crop=none); repeatable")


def parse_sets(items):
    from .errors import SKNetError
    from .typed import parse_value

    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            shown = item if len(item) <= 60 else item[:60] + "..."  # a bad item is quoted by its prefix only
            raise SKNetError(f"--set {shown}: expected KEY=VALUE (e.g. optimizer.lr=0.05)")
        out.append((key.strip(), parse_value(value, key.strip())))
    return tuple(out)


def options(args):
    return Options(recipe=args.recipe, backend=args.backend, device=args.device, resume=args.resume,
                   out=args.out, epochs=args.epochs, max_steps=args.max_steps, subset=args.subset,
                   val_subset=args.val_subset, ckpt_every=args.ckpt_every, seed=args.seed, quiet=args.quiet,
                   sets=parse_sets(args.sets))


def run(args):
    """Train what the parsed command line asks for: the body of both ``sknet train`` and this module."""
    train(options(args))
    return 0


def train(opts, step_hook=None):
    """Run ``opts`` on its backend in this process; returns the last epoch's metrics row (rank 0)."""
    import importlib

    from . import backend_module
    from .training.cluster import elastic_resume, out_dir_of
    from .training.loop import run

    opts = elastic_resume(opts, out_dir_of(opts))
    # The backend package first: it sets its framework's environment (sknet.backends.mindspore).
    backend_module(opts.backend)
    adapter = importlib.import_module(f"sknet.backends.{opts.backend}.train")
    return run(opts, adapter, step_hook=step_hook)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sknet.train", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    return run_command("sknet.train", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
