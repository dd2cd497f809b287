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
  line naming the nodes it waited for (msrun's cluster timeout is reported by the worker,
  see sknet.training.cluster).

``python -m sknet.launch port`` prints a free port (for the commands of a multi-node job).
Exit statuses follow sknet.exits: 2 for a port problem, 1 for a rendezvous that timed out;
the launcher's own status otherwise.
"""
import errno
import socket
import sys

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


def torchrun(argv):
    from torch.distributed.elastic.rendezvous.api import RendezvousTimeoutError
    from torch.distributed.run import main, parse_args

    args = parse_args(argv)
    lead = argv[:len(argv) - len(args.training_script_args) - 1]
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
    except RendezvousTimeoutError:
        timeout = dict(kv.split("=", 1) for kv in args.rdzv_conf.split(",") if "=" in kv).get("join_timeout", "600")
        raise RunFailed(f"rendezvous at {args.rdzv_endpoint} timed out after {timeout} s (--rdzv-conf=join_timeout=S) "
                        f"waiting for --nnodes={args.nnodes}: not every node other than this one (--node-rank="
                        f"{args.node_rank}) joined; start each with the same --rdzv-endpoint, --rdzv-id and "
                        f"--nnodes") from None
    return 0


def msrun(argv):
    from mindspore.parallel.cluster import run as ms

    sys.argv = ["msrun", *argv]
    args = ms.get_args()
    lead = argv[:argv.index(args.task_script)] if args.task_script in argv else argv
    if not given(lead, "--master_port"):
        if args.worker_num != args.local_worker_num:
            raise multi_node_needs_port("--master_port")
        args.master_port = free_port()
    elif args.node_rank in (0, -1):
        check_port(args.master_addr, args.master_port, "--master_port")
    try:
        ms.run(args)
    except RuntimeError as err:
        # The workers' own one-line errors are already on the console (msrun tails their logs).
        raise RunFailed(f"msrun: {str(err).strip().splitlines()[0]}") from None
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
