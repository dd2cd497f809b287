"""What a worker learns from its launcher: an elastic restart to resume from, a cluster that did not form,
nodes that run different numbers of workers. Framework-free: reads the launchers' environment only."""
import os
from dataclasses import replace
from pathlib import Path

from .failure import RunFailed


def restart_count():
    """torchrun's restart number of this worker group (0 on the first attempt and outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def elastic_resume(opts, out_dir):
    """``opts`` for this attempt: after a torchrun restart (``--max-restarts``) the run resumes from
    ``out_dir``'s last checkpoint by itself, whatever ``--resume`` the first attempt was given
    (resuming again from that would redo, or lose, the steps since)."""
    if restart_count() == 0:
        return opts
    from .rundir import RunDir

    if opts.resume not in (None, "auto") and not RunDir(out_dir, opts.backend).last.is_file():
        return opts    # the first attempt died before its first checkpoint: start over from the given one
    return replace(opts, resume="auto")


def join_failure(err):
    """The one-line RunFailed for an msrun cluster that did not form (MindSpore's init() raised ``err``)."""
    e = os.environ
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    first = first.split(". You can run command")[0]    # MindSpore's hint names a grep, not the cause
    cluster = f"the cluster of {e.get('MS_WORKER_NUM', '?')} workers at {e.get('MS_SCHED_HOST', '?')}:" \
              f"{e.get('MS_SCHED_PORT', '?')}"
    if e.get("MS_ROLE") == "MS_SCHED":
        # The scheduler's init() lasts the whole job: it also raises when a worker goes quiet later.
        return RunFailed(f"msrun's scheduler: {cluster} failed (msrun --cluster_time_out "
                         f"{e.get('MS_TOPO_TIMEOUT', '?')} s): {first}")
    # MS_NODE_ID is the worker's rank too (msrun numbers node_rank x local_worker_num + i), not its node.
    return RunFailed(
        f"rank {e.get('RANK_ID', '?')}: {cluster} did not form within {e.get('MS_TOPO_TIMEOUT', '?')} s (msrun "
        f"--cluster_time_out): {first}; every node must be started, with the same --worker_num, --master_addr and "
        f"--master_port, and --worker_num must equal the sum of the nodes' --local_worker_num")


def check_workers_per_node(world):
    """Every node must run as many workers as the others (torchrun's LOCAL_WORLD_SIZE): with uneven
    nodes torchrun still forms one group, and the run would silently train on another global batch."""
    if not world.distributed or "LOCAL_WORLD_SIZE" not in os.environ:
        return
    local = int(os.environ["LOCAL_WORLD_SIZE"])
    total, = world.all_sum([local])
    # Equal counts sum to size x local on every rank; any spread makes at least one rank differ.
    mismatch = world.all_sum([float(int(total) != world.size * local)])[0]
    if mismatch:
        raise RunFailed(f"rank {world.rank}: the nodes run different numbers of workers (this one {local}, "
                        f"{world.size} in all): start every node with the same --nproc-per-node")


def out_dir_of(opts):
    """The run folder ``opts`` will write (the loop's rule), without building the dataset."""
    from ..recipe import load_recipe
    from .options import default_out

    return Path(opts.out) if opts.out else default_out(load_recipe(opts.recipe), opts.backend)
