"""The ``sknet`` command line: one module per subcommand in ``sknet.commands``
(``HELP`` its one line, ``EXAMPLES`` its help's example, ``add_arguments``, ``run``).

Every error that is the user's to fix (a bad spec, checkpoint or flag) is printed as
one line on stderr with exit status 2; the exit statuses follow one rule (sknet.exits).
"""
import argparse
import importlib
import sys

from .exits import run_command

COMMANDS = ("list", "info", "convert", "parity", "export", "attention", "train", "validate")


def _load(name):
    try:
        return importlib.import_module(f"sknet.commands.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"sknet.commands.{name}":
            return None
        raise


DESCRIPTION = "Selective Kernel Networks (SKNet) from one spec: PyTorch, MindSpore and ONNX."
EPILOG = """\
Run 'sknet COMMAND --help' for a command's options and examples.
Training on several workers: python -m sknet.train under torchrun or msrun (docs/training.md)."""


def parser():
    from . import __version__

    top = argparse.ArgumentParser(prog="sknet", description=DESCRIPTION, epilog=EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"sknet {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for name in COMMANDS:
        module = _load(name)
        if module is not None:
            examples = getattr(module, "EXAMPLES", "")
            p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                               epilog=f"examples:\n{examples}" if examples else None,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            module.add_arguments(p)
            p.set_defaults(run=module.run)
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    return run_command(f"sknet {args.command}", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
