"""What a run leaves in its folder: ``last``/``best`` checkpoints, metrics rows, curves, digests."""
import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from .failure import TrainError

CKPT_SUFFIX = {"torch": ".pth", "mindspore": ".ckpt"}
METRIC_FIELDS = ("epoch", "step", "train_loss", "val_loss", "top1", "top5", "lr", "images_per_s",
                 "epoch_s", "wall_s")


class RunDir:
    """``last``/``best`` checkpoints, ``metrics.jsonl``/``.csv``, ``curves.png`` and ``digests/`` of one run."""

    def __init__(self, path, backend):
        self.path = Path(path)
        self.suffix = CKPT_SUFFIX[backend]

    @property
    def last(self):
        return self.path / f"last{self.suffix}"

    @property
    def best(self):
        return self.path / f"best{self.suffix}"

    @property
    def metrics(self):
        return self.path / "metrics.jsonl"

    def make(self):
        self.path.mkdir(parents=True, exist_ok=True)

    def resume_path(self, resume):
        """The checkpoint to resume from: ``auto`` = last if present, else None; a path must exist."""
        if resume is None:
            return None
        if resume == "auto":
            return self.last if self.last.is_file() else None
        path = Path(resume)
        if not path.is_file():
            raise TrainError(f"--resume {resume}: no such file")
        if path.suffix != self.suffix:
            raise TrainError(f"--resume {resume}: a {self.suffix} checkpoint is needed to resume this backend "
                             f"(convert it with 'sknet convert --with-optimizer')")
        return path

    def read_metrics(self, upto_step=None):
        """Rows of metrics.jsonl, without those after ``upto_step`` (a resume drops what it redoes)."""
        if not self.metrics.is_file():
            return []
        rows = [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
        return [r for r in rows if upto_step is None or r["step"] <= upto_step]

    def write_metrics(self, rows):
        """metrics.jsonl and metrics.csv with ``rows``, each written atomically."""
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        atomic_write(self.metrics, lambda tmp: Path(tmp).write_text(text))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, METRIC_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path / "metrics.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))

    def write_digest(self, rank, step, sha256):
        """digests/rank<R>.json: each rank's final weights, for checking that the ranks agree."""
        folder = self.path / "digests"
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"rank": rank, "step": step, "sha256": sha256})
        atomic_write(folder / f"rank{rank}.json", lambda tmp: Path(tmp).write_text(text))

    def plot(self, rows, title=""):
        """Loss and top-1/top-5 per epoch as curves.png (matplotlib's Agg: no display needed)."""
        if not rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        ep = [r["epoch"] for r in rows]
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
        ax_loss.plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
        ax_loss.plot(ep, [r["val_loss"] for r in rows], "s-", label="val")
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("loss")
        ax_loss.legend()
        ax_acc.plot(ep, [r["top1"] for r in rows], "o-", label="top-1")
        ax_acc.plot(ep, [r["top5"] for r in rows], "s-", label="top-5")
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("val accuracy (%)")
        ax_acc.legend()
        fig.suptitle(title)
        fig.tight_layout()
        atomic_write(self.path / "curves.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))
        plt.close(fig)


def best_top1(rows):
    return max((r["top1"] for r in rows), default=-1.0)


def epoch_row(epoch, step, train_loss, val, lr, images_per_s, epoch_s, wall_s):
    """One metrics row: ``val`` = (loss sum, top1 count, top5 count, n)."""
    loss_sum, c1, c5, n = val
    return {"epoch": epoch, "step": step, "train_loss": round(float(train_loss), 6),
            "val_loss": round(loss_sum / n, 6), "top1": round(100.0 * c1 / n, 4),
            "top5": round(100.0 * c5 / n, 4), "lr": float(lr), "images_per_s": round(images_per_s, 2),
            "epoch_s": round(epoch_s, 2), "wall_s": round(wall_s, 2)}


def ema_scores(val):
    """The EMA model's columns of a metrics row, from its (loss sum, top1, top5, n)."""
    loss_sum, c1, c5, n = val
    return {"ema_val_loss": round(loss_sum / n, 6), "ema_top1": round(100.0 * c1 / n, 4),
            "ema_top5": round(100.0 * c5 / n, 4)}


def ema_path(path):
    """Where the EMA weights of checkpoint ``path`` go: ``last.pth`` -> ``last_ema.pth``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_ema{path.suffix}")


def state_digest(canonical):
    """sha256 of every canonical tensor's name and bytes: equal digests mean bit-identical models."""
    h = hashlib.sha256()
    for name, arr in canonical.items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()
