"""Framework-free timing helpers: per-iteration timer, resident-memory sampler, result rows."""
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes():
    """Resident set size of this process now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


class PeakRSS:
    """Samples RSS every few ms on a thread; ``extra`` is the peak above the RSS at entry.

    CPU frameworks have no per-op allocator statistics that torch and MindSpore share, so
    the process's resident memory is the one figure both can be compared on.
    """

    def __init__(self, interval=0.002):
        self.interval = interval
        self.base = self.peak = 0
        self._stop = threading.Event()

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def extra(self):
        return self.peak - self.base


@dataclass
class Figure:
    """Per-iteration wall times of one (model, implementation, task), gathered over rounds."""
    times: list = field(default_factory=list)
    peak_extra: int = 0
    round_medians: list = field(default_factory=list)

    def add(self, times, peak_extra):
        self.times.extend(times)
        self.round_medians.append(statistics.median(times))
        self.peak_extra = max(self.peak_extra, peak_extra)

    @property
    def median(self):
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def spread(self):
        """Inter-quartile range over the median: how noisy the machine was."""
        if len(self.times) < 4:
            return float("nan")
        q = statistics.quantiles(self.times, n=4)
        return (q[2] - q[0]) / self.median


# The dense work both frameworks' roofs are measured on: a square GEMM and a 3x3 conv.
ROOF_GEMM_N = 1024
ROOF_CONV_SHAPE = (8, 256, 28, 28)  # batch, channels in = out, height, width
ROOF_GEMM_FLOPS = 2 * ROOF_GEMM_N ** 3
ROOF_CONV_FLOPS = 2 * 9 * ROOF_CONV_SHAPE[0] * ROOF_CONV_SHAPE[1] ** 2 * ROOF_CONV_SHAPE[2] * ROOF_CONV_SHAPE[3]


def best_rate(fn, flops, seconds=1.0, sync=None):
    """GFLOP/s of the fastest of repeated calls of ``fn`` (``flops`` each) over ``seconds``."""
    fn()
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def round_ratios(ours, theirs):
    """Their median over ours, round by round: how far the machine's noise moves the ratio."""
    return [t / o for o, t in zip(ours.round_medians, theirs.round_medians)]


def timed(step, iters, sync=None):
    """Wall time of each of ``iters`` calls of ``step`` (``sync`` waits for async work)."""
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        if sync is not None:
            sync()
        out.append(time.perf_counter() - t0)
    return out


def cpu_model():
    """The processor's name, for the header of a result."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median_run(runs, rate=lambda run: run):
    """The run of median ``rate`` (the lower middle one of an even count); the first failed run
    (``rate`` None) if any failed: ``--repeat`` in train_e2e.py and input_pipeline.py."""
    failed = [r for r in runs if rate(r) is None]
    if failed:
        return failed[0]
    return sorted(runs, key=rate)[(len(runs) - 1) // 2]
