"""The ``sknet`` command line: one module per subcommand in ``sknet.commands``.

Every error that is the user's to fix (a bad spec, checkpoint or flag) is printed as
one line on stderr with exit status 2; the exit statuses follow one rule (sknet.exits).
"""
import argparse
import importlib
import sys

from .exits import run_command

COMMANDS = ("info", "convert", "parity", "export", "attention", "train", "validate")


def _load(name):
    try:
        return importlib.import_module(f"sknet.commands.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"sknet.commands.{name}":
            return None
        raise


def parser():
    top = argparse.ArgumentParser(prog="sknet", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = _load(name)
        if module is not None:
            p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
            module.add_arguments(p)
            p.set_defaults(run=module.run)
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    return run_command(f"sknet {args.command}", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
