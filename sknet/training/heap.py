"""Keep freed memory in the process for reuse: glibc's malloc settings for a CPU training process.

glibc serves each block over its mmap threshold (at most 32 MiB) with a fresh mmap and
unmaps it when freed, and hands the top of its heap back to the kernel past a trim
threshold; a CPU training step allocates and frees its activations and gradients every step
(a 16 x 64 x 112 x 112 float32 map is 51 MiB), so each step page-faults them in again,
with the kernel zeroing every page. With mmap off and trimming off, the second step reuses
the first one's pages (docs/performance.md has the step times before and after). PyTorch's
CUDA caching allocator does the same for device memory, and jemalloc or tcmalloc
(LD_PRELOAD) for host memory where installed. The cost: the process keeps its peak heap
until it exits.
"""
import ctypes
import ctypes.util
import sys

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# mallopt takes an int: never trim below 2 GiB of free top-of-heap.
NEVER_TRIM = 2 ** 31 - 1


def keep_freed_memory():
    """Turn off glibc's mmap for large blocks and its heap trimming; False where not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):   # glibc only (musl's mallopt does nothing)
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
