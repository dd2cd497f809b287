"""What a run prints: rank 0's log lines and a progress line every few seconds."""
import math
import sys
import time


class Progress:
    """One line every few seconds on the main rank: step, loss, lr, images/s, ETA."""

    def __init__(self, total_steps, start_step, global_batch, enabled=True, every_s=10.0, stream=None):
        self.total, self.start, self.batch = total_steps, start_step, global_batch
        self.enabled, self.every = enabled, every_s
        self.stream = stream or sys.stdout
        self.t0 = self.last = time.monotonic()

    def rate(self, step):
        done = step - self.start
        dt = time.monotonic() - self.t0
        return done * self.batch / dt if dt > 0 and done > 0 else 0.0

    def update(self, step, epoch, loss, lr, force=False):
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < self.every):
            return
        self.last = now
        ips = self.rate(step)
        left = (self.total - step) * self.batch / ips if ips > 0 else float("nan")
        print(f"epoch {epoch + 1} step {step}/{self.total} ({100.0 * step / self.total:5.1f}%) "
              f"loss {loss:.4f} lr {lr:.5f} {ips:7.1f} img/s ETA {fmt_s(left)}",
              file=self.stream, flush=True)


def fmt_s(seconds):
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(round(seconds))
    return f"{seconds // 60:d}:{seconds % 60:02d}"


def log(rank, *parts):
    if rank == 0:
        print(*parts, flush=True)
