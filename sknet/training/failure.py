"""How a run stops: bad training input, a failure while running, SIGTERM, and the test-only fault hook."""
import os
import sys

from ..errors import SKNetError

# Fault injection for the launcher tests: "RANK:STEP" makes that rank SIGKILL itself
# right after finishing global step STEP (checkpoints up to then are on disk), on the first
# attempt only: a group that torchrun restarts (--max-restarts) then runs through.
FAULT_ENV = "SKNET_FAULT_KILL"


class TrainError(SKNetError):
    """A training run that cannot start: bad resume file, no full batch, bad option (exit 2)."""


class RunFailed(TrainError):
    """A run that failed while running: lost worker, SIGTERM (exit 1, see sknet.exits)."""
    exit_status = 1


class Stop(Exception):
    """SIGTERM in a worker: launchers send it to every worker when one of them fails."""


def on_sigterm(signum, frame):
    raise Stop("stopped by SIGTERM (the launcher stops every worker when one of them fails)")


def last_good_text(last_good):
    return f"last good checkpoint: {last_good[0] or 'none'} (step {last_good[1]})"


def worker_failure(err, rank, distributed, step, last_good):
    """The one-line RunFailed a worker stops with, naming the last good checkpoint.

    ``err`` is a ``Stop``, a ``SKNetError`` raised mid-run or, in a distributed run, a
    collective's RuntimeError (a peer died); anything else is not a worker failure and
    gives None, for the caller to re-raise.
    """
    where = last_good_text(last_good)
    if isinstance(err, RunFailed):
        return err
    if isinstance(err, Stop):
        return RunFailed(f"rank {rank}: {err} at step {step}; {where}")
    if isinstance(err, SKNetError):
        return RunFailed(f"rank {rank}: stopped at step {step}: {err}; {where}")
    if not distributed:
        return None
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return RunFailed(f"rank {rank}: stopped at step {step}: {first} (a worker died or the launcher "
                     f"stopped the job); {where}")


def maybe_fault(rank, step):
    """SIGKILL this process after ``step`` when SKNET_FAULT_KILL says "rank:step" (tests only)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
        return
    want_rank, want_step = (int(v) for v in spec.split(":"))
    if rank == want_rank and step == want_step:
        import signal

        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
