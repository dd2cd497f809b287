"""Cluster launches on localhost, under torchrun and msrun: 2 nodes x 1 worker equal 1 node x 2 workers bit
for bit, a late node joins, a missing node and nodes with different worker counts are bounded one-line
errors, an elastic restart resumes to the same bits, and a busy port is refused in one line."""
import os
import socket
import subprocess
import sys
import time

import pytest

from test_launch import BIN, ROOT, digests, free_port, torchrun
from test_train import FASHION, env, tiny_recipe

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) not installed")]
ARGS = ("--subset", "256", "--val-subset", "100")   # 4 steps of 2 x 32, a checkpoint after every step
MS_ARGS = ("--subset", "128", "--val-subset", "100")  # 2 steps: MindSpore's are the slow ones
TIMEOUT = 300    # generous for a loaded 2-core machine, but bounded


def train_args(recipe, out):
    return ["-m", "sknet.train", "--config", recipe, "--backend", "torch", "--out", str(out), "--quiet", *ARGS]


def node(rank, port, recipe, out, *extra):
    cmd = [sys.executable, "-m", "sknet.launch", "torchrun", "--nnodes=2", "--nproc_per_node=1",
           f"--node-rank={rank}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", *extra,
           *train_args(recipe, out)]
    return subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ms_node(rank, port, recipe, out, *extra, worker_num=2, local=1, timeout=60, extra_env=None):
    """One msrun "node" on localhost, as a cluster starts it (its logs in OUT/logs<rank>)."""
    cmd = [sys.executable, "-m", "sknet.launch", "msrun", f"--worker_num={worker_num}", f"--local_worker_num={local}",
           f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}", "--join=True",
           f"--cluster_time_out={timeout}", f"--log_dir={out}/logs{rank}", "python", "-m", "sknet.train",
           "--config", recipe, "--backend", "mindspore", "--out", str(out), "--quiet", *MS_ARGS, *extra]
    # msrun starts the `python` found on PATH: the venv's.
    e = dict(env(), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(extra_env or {}))
    return subprocess.Popen(cmd, env=e, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*procs):
    """(returncode, stderr) of each process, waited for together (a pipe left unread could block its writer)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(len(procs)) as pool:
        outs = list(pool.map(lambda p: p.communicate(timeout=TIMEOUT), procs))
    return [(p.returncode, err) for p, (_, err) in zip(procs, outs)]


def launch_errors(err):
    return [line for line in err.splitlines() if line.startswith("sknet.launch: error:")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """1 node x 2 workers, uninterrupted: the digest every other launch must reproduce."""
    folder = tmp_path_factory.mktemp("ref")
    recipe = tiny_recipe(folder)
    res = torchrun(recipe, folder / "run", *ARGS)
    assert res.returncode == 0, res.stderr[-3000:]
    d0, d1 = digests(folder / "run")
    assert d0["sha256"] == d1["sha256"] and d0["step"] == 4
    return recipe, d0["sha256"]


def test_two_nodes_equal_one_node_and_a_late_node_joins(reference, tmp_path):
    recipe, want = reference
    port = free_port()
    first = node(0, port, recipe, tmp_path / "run")
    time.sleep(3)    # node 1 comes up late: node 0 waits in the rendezvous
    second = node(1, port, recipe, tmp_path / "run")
    for code, err in finish(first, second):
        assert code == 0, err[-3000:]
    assert [d["sha256"] for d in digests(tmp_path / "run")] == [want, want]


def test_missing_node_is_a_bounded_one_line_error(reference, tmp_path):
    recipe, _ = reference
    port = free_port()
    t0 = time.monotonic()
    p = node(0, port, recipe, tmp_path / "run", "--rdzv-conf=join_timeout=5")
    _, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 1
    lines = [line for line in err.splitlines() if line.startswith("sknet.launch: error:")]
    assert len(lines) == 1 and "timed out after 5 s" in lines[0] and "--nnodes=2" in lines[0], err[-2000:]
    assert "--node-rank=0" in lines[0] and "Traceback" not in err
    assert time.monotonic() - t0 < 120
    # Node 0 missing, seen from node 1: node 0 hosts the store, node 1 gives up after read_timeout.
    t0 = time.monotonic()
    p = node(1, port, recipe, tmp_path / "run", "--rdzv-conf=read_timeout=5")
    _, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 1
    assert launch_errors(err) == [f"sknet.launch: error: no rendezvous store at 127.0.0.1:{port} within 5 s "
                                  f"(--rdzv-conf=read_timeout=S): node 0 hosts it, and this node (--node-rank=1) "
                                  f"could not reach it; start node 0 with the same --rdzv-endpoint"], err[-2000:]
    assert time.monotonic() - t0 < 120


def test_elastic_restart_resumes_to_the_same_bits(reference, tmp_path):
    """Rank 1 is SIGKILLed after step 3 on the first attempt; torchrun restarts the group, which
    resumes from OUT/last (step 3) without being told and ends bit-identical to the uninterrupted run."""
    recipe, want = reference
    out = tmp_path / "run"
    cmd = [str(BIN / "torchrun"), "--nproc_per_node=2", "--max-restarts=1", *train_args(recipe, out)]
    res = subprocess.run(cmd, env=dict(env(), SKNET_FAULT_KILL="1:3"), cwd=ROOT, capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout and "at step 3" in res.stdout
    assert [d["sha256"] for d in digests(out)] == [want, want]


def test_busy_port_is_one_line_error():
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for launcher, option in (("torchrun", "--rdzv-endpoint HOST:PORT"), ("msrun", "--master_port")):
            args = (["--nnodes=2", "--node-rank=0", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                     "-m", "sknet.train"] if launcher == "torchrun" else
                    ["--worker_num=2", "--local_worker_num=2", f"--master_port={port}", "python", "-m", "sknet.train"])
            res = subprocess.run([sys.executable, "-m", "sknet.launch", launcher, *args], env=env(), cwd=ROOT,
                                 capture_output=True, text=True, timeout=TIMEOUT)
            assert res.returncode == 2
            assert res.stderr.strip().splitlines() == [
                f"sknet.launch: error: port {port} is in use on this machine (another job?): choose another with "
                f"{option}, or leave it out on a single node for a free one"], res.stderr[-2000:]



def test_nodes_with_different_worker_counts_stop_in_one_line(tmp_path):
    """torchrun forms one group of 3 from a node of 1 and a node of 2 (the global batch would silently
    change): every worker refuses it, and each node's launcher ends with one line naming its failed ranks.
    Both nodes start at once: node 1 used to win c10d's race to host the store on this shared machine,
    node 0 then stopped on a "busy" port and node 1 waited out join_timeout (the hang of 8ca0cea)."""
    recipe = tiny_recipe(tmp_path)
    port = free_port()
    t0 = time.monotonic()
    first = node(0, port, recipe, tmp_path / "run")
    second = node(1, port, recipe, tmp_path / "run", "--nproc_per_node=2")
    done = finish(first, second)
    assert time.monotonic() - t0 < 120
    for (code, err), ranks in zip(done, (1, 2)):
        assert code == 1, err[-3000:]
        refusals = [line for line in err.splitlines() if "the nodes run different numbers of workers" in line]
        assert refusals and all(f"this one {ranks}, 3 in all" in line for line in refusals), err[-3000:]
        lines = launch_errors(err)
        assert len(lines) == 1 and lines[0].startswith("sknet.launch: error: torchrun: workers of this node "
                                                        "failed: rank "), err[-3000:]
        assert "exit code 1" in lines[0] and "Traceback" not in err


needs_msrun = pytest.mark.skipif(not (BIN / "msrun").exists(), reason="msrun (MindSpore) not installed")


@pytest.fixture(scope="module")
def ms_reference(tmp_path_factory):
    """msrun, 1 node x 2 workers, uninterrupted: the digest the other msrun launches must reproduce."""
    pytest.importorskip("mindspore")
    folder = tmp_path_factory.mktemp("ms_ref")
    recipe = tiny_recipe(folder)
    (code, err), = finish(ms_node(0, free_port(), recipe, folder / "run", local=2))
    assert code == 0, err[-3000:]
    d0, d1 = digests(folder / "run")
    assert d0["sha256"] == d1["sha256"] and d0["step"] == 2
    return recipe, d0["sha256"]


@needs_msrun
def test_msrun_two_nodes_equal_one_node(ms_reference, tmp_path):
    """Under msrun too, 2 nodes x 1 worker (node 1 started 3 s late) end with 1 node x 2's bits,
    and node 1, sharing node 0's address, starts no second scheduler (it would fail that node)."""
    recipe, want = ms_reference
    port = free_port()
    first = ms_node(0, port, recipe, tmp_path / "two")
    time.sleep(3)
    second = ms_node(1, port, recipe, tmp_path / "two")
    for code, err in finish(first, second):
        assert code == 0, err[-3000:]
    assert [d["sha256"] for d in digests(tmp_path / "two")] == [want] * 2
    assert not (tmp_path / "two" / "logs1" / "scheduler.log").exists()


@needs_msrun
def test_msrun_dead_worker_fails_the_job_and_a_relaunch_resumes_to_the_same_bits(ms_reference, tmp_path):
    """MindSpore 2.10 has no recovery on the CPU (docs/training.md): rank 1 SIGKILLed after step 1 of 2
    fails the job in one line, step 1's checkpoint stays, and the same command with --resume auto
    ends with the uninterrupted run's bits."""
    recipe, want = ms_reference
    out = tmp_path / "run"
    (code, err), = finish(ms_node(0, free_port(), recipe, out, local=2, extra_env={"SKNET_FAULT_KILL": "1:1"}))
    lines = launch_errors(err)
    assert code == 1 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("sknet.launch: error: msrun node 0 (ranks 0-1 of --worker_num=2): ")
    # msrun polls every second and SIGKILLs the rest, so rank 0 rarely gets to say anything itself.
    assert ("(workers: rank 0 stopped by msrun, rank 1 signal SIGKILL; an sknet.train run resumes from its last "
            "checkpoint with --resume auto)" in lines[0]) or (
        "rank 0: stopped at step 1: " in lines[0] and f"last good checkpoint: {out / 'last.ckpt'} (step 1)" in lines[0])
    import mindspore as ms

    assert int(ms.load_checkpoint(str(out / "last.ckpt"))["step"].asnumpy().reshape(-1)[0]) == 1
    assert not (out / "digests").exists()
    (code, err), = finish(ms_node(0, free_port(), recipe, out, "--resume", "auto", local=2))
    assert code == 0, err[-3000:]
    assert "at step 1" in (out / "logs0" / "worker_0.log").read_text()
    assert [d["sha256"] for d in digests(out)] == [want] * 2


@needs_msrun
def test_msrun_missing_node_is_a_bounded_one_line_error(tmp_path):
    recipe = tiny_recipe(tmp_path)
    t0 = time.monotonic()
    (code, err), = finish(ms_node(0, free_port(), recipe, tmp_path / "run", timeout=10))
    assert code == 1
    lines = launch_errors(err)
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("sknet.launch: error: msrun node 0 (ranks 0-0 of --worker_num=2): rank 0: the "
                               "cluster of 2 workers at 127.0.0.1:") and "did not form within 10 s" in lines[0]
    assert time.monotonic() - t0 < 120


@needs_msrun
@pytest.mark.parametrize("worker_num, local, rank, why", [
    (2, 2, 1, "a job whose workers all run on one node has only node 0"),
    (3, 2, 0, "the job's workers cannot be split evenly into nodes of this size"),
    (4, 2, 2, "2 nodes of 2 make the job, numbered from 0")])
def test_msrun_layout_one_node_can_tell_is_wrong_is_refused_before_start(worker_num, local, rank, why, tmp_path,
                                                                          capsys, monkeypatch):
    from sknet.launch import main

    monkeypatch.setattr(sys, "argv", list(sys.argv))    # msrun's parser reads sys.argv, which it is given
    logs = tmp_path / "logs"
    code = main(["msrun", f"--worker_num={worker_num}", f"--local_worker_num={local}", f"--node_rank={rank}",
                 "--master_addr=127.0.0.1", "--master_port=1", f"--log_dir={logs}", "python", "-c", "pass"])
    assert code == 2 and capsys.readouterr().err.strip().splitlines() == [
        f"sknet.launch: error: msrun: --worker_num={worker_num} --local_worker_num={local} --node_rank={rank}: "
        f"{why}; every node runs the same --local_worker_num and --worker_num is their sum"]
    assert not logs.exists()


@needs_msrun
def test_msrun_worker_num_not_the_nodes_sum_is_a_bounded_one_line_error(tmp_path):
    """--worker_num=3 over two nodes of 1: no node can tell alone, the cluster never forms, and both stop
    after --cluster_time_out in one line each."""
    recipe = tiny_recipe(tmp_path)
    port = free_port()
    t0 = time.monotonic()
    done = finish(*(ms_node(r, port, recipe, tmp_path / "run", worker_num=3, timeout=10) for r in (0, 1)))
    assert time.monotonic() - t0 < 150
    for rank, (code, err) in enumerate(done):
        lines = launch_errors(err)
        assert code == 1 and len(lines) == 1, err[-3000:]
        assert lines[0].startswith(f"sknet.launch: error: msrun node {rank} (ranks {rank}-{rank} of --worker_num=3): "
                                   f"rank {rank}: the cluster of 3 workers at 127.0.0.1:{port} did not form within "
                                   f"10 s (msrun --cluster_time_out): "), lines[0]
