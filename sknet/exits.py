"""One exit-status rule for every entry point (``sknet <command>``, ``python -m sknet.train``).

- 2: bad input, the user's to fix (spec, recipe, option, file): any ``SKNetError``;
- 1: a run that failed while running (lost worker, SIGTERM): errors whose class sets
  ``exit_status = 1`` (``sknet.training.RunFailed``);
- 130: KeyboardInterrupt; 141: the reader of stdout went away (``| head``).

Each error is one line on stderr, ``PROG: error: MESSAGE``; under a launcher the message
names the worker's rank, so the same error reads the same from either entry point.
"""
import os
import sys

from .errors import SKNetError

BAD_INPUT = 2
INTERRUPTED = 130
BROKEN_PIPE = 141


def exit_status(err):
    """The exit status ``err`` ends a command with (see the module's docstring)."""
    if isinstance(err, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(err, BrokenPipeError):
        return BROKEN_PIPE
    return getattr(err, "exit_status", BAD_INPUT)


def error_line(prog, err):
    text = str(err)
    return f"{prog}: error: {'' if text.startswith('rank ') else rank_label()}{text}"


def rank_label():
    """'rank N: ' under torchrun (RANK) or msrun (RANK_ID), else '' (msrun's scheduler has RANK_ID 0 too)."""
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        return ""
    for key in ("RANK", "RANK_ID"):
        if key in os.environ:
            return f"rank {os.environ[key]}: "
    return ""


def run_command(prog, command):
    """``command()``'s return value (None: 0), or the exit status of what it raised, reported on stderr.

    Only the errors of the rule are caught; anything else is a bug and keeps its traceback.
    """
    try:
        return command() or 0
    except SKNetError as err:
        print(error_line(prog, err), file=sys.stderr, flush=True)
        return exit_status(err)
    except KeyboardInterrupt as err:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return exit_status(err)
    except BrokenPipeError as err:
        # The reader (e.g. `| head`) went away: stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return exit_status(err)
