"""torchrun and msrun with ports that cannot collide: ``python -m sknet.launch torchrun|msrun ARGS``.

ARGS are the launcher's own, unchanged; the launcher runs in this process. What is added:

- a one-node job given no port gets a free one (torchrun already picks one; msrun would
  take 8118, the same for every job on the machine);
- a job spanning nodes must name its port (every node has to agree on it): without one it
  stops before starting, pointing at ``python -m sknet.launch port``;
- on the node that hosts the rendezvous (node rank 0, or a local rendezvous host), a port
  already in use is a one-line error naming it and the option that sets it, rather than
  joining another job's c10d rendezvous or failing later with a traceback;
- torchrun's rendezvous timeout (a node that never joined within ``join_timeout``) is one
  line naming the nodes it waited for;
- msrun: an uneven layout (``--worker_num`` not this node's ``--local_worker_num`` times a
  number of nodes, a ``--node_rank`` past them) is refused before anything starts; a second
  "node" on node 0's machine starts no scheduler of its own (msrun starts one wherever
  ``--master_addr`` is a local address);
- a failed node ends with one line: torchrun's ChildFailedError page becomes the failed ranks and
  how they ended, msrun's "check the logs" becomes this node's ranks and its first worker's own
  error (a cluster that did not form within ``--cluster_time_out``, see sknet.training.cluster).

``python -m sknet.launch port`` prints a free port (for the commands of a multi-node job).
Exit statuses follow sknet.exits: 2 for a port or layout problem, 1 for a rendezvous that timed
out or a failed worker; the launcher's own status otherwise.
"""
import errno
import os
import signal
import socket
import sys
from pathlib import Path

from .errors import SKNetError
from .exits import run_command
from .training.failure import RunFailed

USAGE = "usage: python -m sknet.launch torchrun|msrun LAUNCHER-ARGS... | python -m sknet.launch port"


def free_port():
    """A TCP port nothing listens on now (the kernel's pick; another job may still take it later)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def check_port(host, port, option):
    """Raise a one-line SKNetError if ``port`` is in use on this machine; skip if ``host`` is not local.

    SO_REUSEADDR as the launchers' servers set it: a port left in TIME_WAIT by a finished job
    is free for them and must not be reported as busy.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host not in ("localhost", "") else "", port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise SKNetError(f"port {port} is in use on this machine (another job?): choose another with "
                                 f"{option}, or leave it out on a single node for a free one") from None
            if err.errno in (errno.EADDRNOTAVAIL, errno.EACCES) or isinstance(err, socket.gaierror):
                return    # not an address of this machine: the rendezvous host checks its own port
            raise


def multi_node_needs_port(option):
    return SKNetError(f"a job on several nodes needs {option} (the same on every node); pick one on the "
                      f"rendezvous host with 'python -m sknet.launch port'")


def given(argv, name):
    """Whether option ``name`` (``--x V`` or ``--x=V``) appears among the launcher's arguments."""
    return any(a == name or a.startswith(name + "=") for a in argv)


def with_option(argv, lead, names, value):
    """``argv`` with the launcher option ``names`` (its spellings) set to ``value``: rewritten where the
    first ``lead`` arguments give it, else put first."""
    out = list(argv)
    for i, a in enumerate(out[:lead]):
        if a in names:
            out[i + 1] = value
            return out
        if a.split("=", 1)[0] in names:
            out[i] = f"{a.split('=', 1)[0]}={value}"
            return out
    return [f"{names[0]}={value}", *out]


def conf_of(args):
    return dict(kv.split("=", 1) for kv in args.rdzv_conf.split(",") if "=" in kv)


def torchrun(argv):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError, RendezvousTimeoutError
    from torch.distributed.run import main, parse_args

    args = parse_args(argv)
    lead = argv[:len(argv) - len(args.training_script_args) - 1]
    node_given = given(lead, "--node-rank") or given(lead, "--node_rank")
    if args.rdzv_backend == "c10d" and node_given and args.node_rank > 0 and "is_host" not in conf_of(args):
        # c10d lets whichever node first binds the endpoint on its host serve the store. On node 0's
        # machine a node > 0 could win that race: node 0 then found its port taken and stopped, and
        # the other waited out join_timeout (600 s). Node 0 hosts, as msrun's node 0 hosts its scheduler.
        conf = ",".join(filter(None, [args.rdzv_conf, "is_host=false"]))
        argv = with_option(argv, len(lead), ("--rdzv-conf", "--rdzv_conf"), conf)
        args = parse_args(argv)
    max_nodes = int(str(args.nnodes).split(":")[-1])
    if not args.standalone:
        endpoint = args.rdzv_endpoint if args.rdzv_backend != "static" else None
        if endpoint:
            host, _, port = endpoint.rpartition(":")
            if not port and max_nodes > 1:
                raise multi_node_needs_port("--rdzv-endpoint HOST:PORT")
            if port and int(port) and args.node_rank == 0:
                check_port(host, int(port), "--rdzv-endpoint HOST:PORT")
        elif given(lead, "--master-port") or given(lead, "--master_port"):
            if args.node_rank == 0:
                check_port(args.master_addr, args.master_port, "--master-port")
        elif max_nodes > 1:
            raise multi_node_needs_port("--rdzv-endpoint HOST:PORT")
        # One node and no port: torchrun rendezvouses on a free port of its own.
    try:
        main(argv)
    except ChildFailedError as err:
        raise RunFailed(child_failure(err)) from None
    except RendezvousConnectionError:
        timeout = conf_of(args).get("read_timeout", "60")
        raise RunFailed(f"no rendezvous store at {args.rdzv_endpoint} within {timeout} s (--rdzv-conf=read_timeout=S): "
                        f"node 0 hosts it, and this node (--node-rank={args.node_rank}) could not reach it; start "
                        f"node 0 with the same --rdzv-endpoint") from None
    except RendezvousTimeoutError:
        timeout = conf_of(args).get("join_timeout", "600")
        raise RunFailed(f"rendezvous at {args.rdzv_endpoint} timed out after {timeout} s (--rdzv-conf=join_timeout=S) "
                        f"waiting for --nnodes={args.nnodes}: not every node other than this one (--node-rank="
                        f"{args.node_rank}) joined; start each with the same --rdzv-endpoint, --rdzv-id and "
                        f"--nnodes") from None
    return 0


def child_failure(err):
    """One line for torchrun's ChildFailedError (its report is a page, after the workers' own one-line errors)."""
    def how(f):
        return f"signal {f.signal_name()}" if f.exitcode < 0 else f"exit code {f.exitcode}"
    failed = ", ".join(f"rank {rank} (local {f.local_rank}) {how(f)}" for rank, f in sorted(err.failures.items()))
    return f"torchrun: workers of this node failed: {failed}; each worker's own error is above"


def check_msrun_layout(args):
    """msrun numbers ranks node_rank x local_worker_num + i and trusts every node to run as many workers:
    a layout no even split can give is refused here, before a cluster that cannot form is started."""
    n, local, node = args.worker_num, args.local_worker_num, args.node_rank
    why = None
    if local > n:
        why = "more workers on this node than in the job"
    elif node < 0:
        return    # no --node_rank: MindSpore hands out the ranks as workers register, any split works
    elif local == n and node > 0:
        why = "a job whose workers all run on one node has only node 0"
    elif n % local:
        why = "the job's workers cannot be split evenly into nodes of this size"
    elif node >= n // local:
        why = f"{n // local} nodes of {local} make the job, numbered from 0"
    if why:
        raise SKNetError(f"msrun: --worker_num={n} --local_worker_num={local} --node_rank={node}: {why}; every "
                         f"node runs the same --local_worker_num and --worker_num is their sum")


def msrun_failure(manager, args, err):
    """One line for a failed msrun node: this node's ranks and its first worker's own error (msrun's
    RuntimeError only says to read the logs)."""
    def errors(path):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return []
        prefix = "sknet.train: error: "
        return [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]
    found = [m for i in range(args.local_worker_num) for m in errors(Path(manager._get_node_id_and_log_path(i)[1]))]
    # A worker stopped by msrun because a sibling failed says so; the sibling's reason comes first.
    first = ([m for m in found if "stopped by SIGTERM" not in m] or found or [None])[0]
    local = args.local_worker_num
    start = 0 if local == args.worker_num else max(args.node_rank, 0) * local
    if first is None:
        # No worker said why: one died silently (a kill, a crash). returncode is what msrun's own last
        # poll saw: None for a worker still running then, which msrun then SIGKILLed with the rest.
        def how(code):
            return ("stopped by msrun" if code is None else f"signal {signal.Signals(-code).name}" if code < 0
                    else f"exit {code}")
        codes = [p.returncode for p in manager.cgn_processes]
        ends = ", ".join(f"rank {start + i} {how(code)}" for i, code in enumerate(codes))
        # Only when every worker went through is the scheduler's own error the reason.
        seen = errors(Path(args.log_dir or ".") / "scheduler.log") if manager.is_master and not any(codes) else []
        first = (f"{str(err).strip().splitlines()[0]} (workers: {ends}{'; ' + seen[0] if seen else ''}; an "
                 f"sknet.train run resumes from its last checkpoint with --resume auto)")
    return (f"msrun node {max(args.node_rank, 0)} (ranks {start}-{start + local - 1} of --worker_num="
            f"{args.worker_num}): {first} (logs in {args.log_dir or '.'})")


def msrun(argv):
    from mindspore.parallel.cluster import run as ms

    sys.argv = ["msrun", *argv]
    args = ms.get_args()
    check_msrun_layout(args)
    lead = argv[:argv.index(args.task_script)] if args.task_script in argv else argv
    if not given(lead, "--master_port"):
        if args.worker_num != args.local_worker_num:
            raise multi_node_needs_port("--master_port")
        args.master_port = free_port()
    elif args.node_rank in (0, -1):
        check_port(args.master_addr, args.master_port, "--master_port")
    from mindspore.parallel.cluster.process_entity import _ProcessManager

    manager = _ProcessManager(args)
    if args.node_rank > 0:
        # msrun starts a scheduler on every node whose --master_addr is one of its own addresses.
        # On a real cluster only node 0 has it; nodes sharing node 0's machine would start a second
        # one, which fails to bind node 0's port and fails its node after its workers are done.
        manager.is_master = False
    try:
        manager.run()
    except RuntimeError as err:
        # msrun exported RANK_ID (its last worker's) into this process: no rank label on the node's line.
        os.environ.pop("RANK_ID", None)
        raise RunFailed(msrun_failure(manager, args, err)) from None
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["port"] and len(argv) == 1:
        print(free_port())
        return 0
    launchers = {"torchrun": torchrun, "msrun": msrun}
    if not argv or argv[0] not in launchers:
        print(USAGE, file=sys.stderr)
        return 2
    return run_command("sknet.launch", lambda: launchers[argv[0]](argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
