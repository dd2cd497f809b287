"""Cluster launches on localhost: 2 nodes x 1 worker equal 1 node x 2 workers bit for bit, a late node
joins, a missing node is a bounded one-line error, an elastic restart resumes to the same bits, and a
busy port is refused in one line."""
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
TIMEOUT = 300    # generous for a loaded 2-core machine, but bounded


def train_args(recipe, out):
    return ["-m", "sknet.train", "--config", recipe, "--backend", "torch", "--out", str(out), "--quiet", *ARGS]


def node(rank, port, recipe, out, *extra):
    cmd = [sys.executable, "-m", "sknet.launch", "torchrun", "--nnodes=2", "--nproc_per_node=1",
           f"--node-rank={rank}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", *extra,
           *train_args(recipe, out)]
    return subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
    for p in (first, second):
        _, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, err[-3000:]
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

