"""sknet.training.heap: a freed large block stays in the process for the next one."""
import platform
import subprocess
import sys

import pytest

# Fills 64 MiB, frees it and prints by how many MiB the resident set shrank (/proc/self/statm).
PROBE = """
import os, sys
import numpy as np
from sknet.training.heap import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
a = np.ones(1 << 24, np.float32)
before = resident()
del a
print(before - resident())
"""


def _released_mib(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_a_freed_block_stays_for_the_next_step():
    # glibc by default unmaps a 64 MiB block when it is freed: the next one is faulted in afresh.
    assert _released_mib("default") > 60
    # Kept: its pages stay in the heap, where the next allocation of the size finds them.
    assert _released_mib("keep") < 1
