"""The ``sknet`` command line: one module per subcommand in ``sknet.commands``.

Every error that is the user's to fix (a bad spec, checkpoint or flag) is printed as
one line on stderr with exit status 2; nothing else is caught.
"""
import argparse
import importlib
import os
import sys

from .errors import SKNetError

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
    try:
        return args.run(args) or 0
    except SKNetError as err:
        print(f"sknet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sknet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
