"""Test top-1 against training time of the Fashion-MNIST recipe runs (docs/recipes.md).

    python benchmarks/fashion_mnist_runs.py --add NAME=RUN_DIR --quiet-img-s 460 --load 7.4 --note "..."
    python benchmarks/fashion_mnist_runs.py          # redraw docs/figures/fashion_mnist_runs.png

``--add`` copies a run folder's per-epoch ``metrics.csv`` rows into
docs/figures/fashion_mnist_runs.csv (one row per run and epoch), with the model's training
speed on a quiet machine: the runs were measured on a shared machine whose load changes by
the minute, so their wall times do not compare; epochs x 60,000 / quiet images/s do.
"""
import argparse
import csv
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sknet.atomic import atomic_write  # noqa: E402

TABLE = ROOT / "docs" / "figures" / "fashion_mnist_runs.csv"
FIGURE = ROOT / "docs" / "figures" / "fashion_mnist_runs.png"
FIELDS = ["run", "note", "epoch", "epochs", "top1", "wall_s", "images_per_s", "load", "quiet_img_s"]
TRAIN_IMAGES = 60000


def read_rows():
    if not TABLE.exists():
        return []
    with open(TABLE, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(TABLE, lambda tmp: Path(tmp).write_text(buf.getvalue()))


def add(rows, name, run_dir, quiet_img_s, load, note, epochs):
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        new = [{"run": name, "note": note, "epoch": r["epoch"], "epochs": epochs, "top1": r["top1"],
                "wall_s": r["wall_s"], "images_per_s": r["images_per_s"], "load": load,
                "quiet_img_s": quiet_img_s} for r in csv.DictReader(f)]
    if not new:
        sys.exit(f"{run_dir}/metrics.csv: no epoch rows")
    return [r for r in rows if r["run"] != name] + new


def quiet_minutes(row):
    return int(row["epoch"]) * TRAIN_IMAGES / float(row["quiet_img_s"]) / 60


def draw(rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ep, ax_t) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["run"] for r in rows):
        runs = [r for r in rows if r["run"] == name]
        label = f"{name}: {runs[0]['note']}"
        ep = [int(r["epoch"]) for r in runs]
        top1 = [float(r["top1"]) for r in runs]
        ax_ep.plot(ep, top1, "o-", label=label)
        ax_t.plot([quiet_minutes(r) for r in runs], top1, "o-", label=label)
    for ax in (ax_ep, ax_t):
        ax.axhline(93.0, color="grey", ls="--", lw=0.8)
        ax.set_ylabel("test top-1 (%)")
        ax.set_ylim(84, 94)
        ax.grid(alpha=0.3)
    ax_ep.set_xlabel("epoch (each run's cosine ends at its last epoch)")
    ax_t.set_xlabel("quiet-machine training minutes (epochs x 60,000 / quiet img/s)")
    ax_t.axvline(12.0, color="red", ls=":", lw=0.8)
    ax_ep.legend(fontsize=7, loc="lower right")
    fig.suptitle("Fashion-MNIST, torchrun 2 CPU workers: test top-1 after each epoch")
    fig.tight_layout()
    atomic_write(FIGURE, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--add", metavar="NAME=RUN_DIR", help="record a run folder's metrics.csv")
    ap.add_argument("--quiet-img-s", type=float, help="the model's training images/s on a quiet machine")
    ap.add_argument("--load", default="", help="1-minute load average while it ran")
    ap.add_argument("--note", default="", help="model and recipe in a few words")
    ap.add_argument("--epochs", default="", help="the run's scheduled epochs")
    args = ap.parse_args()
    rows = read_rows()
    if args.add:
        name, sep, run_dir = args.add.partition("=")
        if not sep or args.quiet_img_s is None:
            ap.error("--add needs NAME=RUN_DIR and --quiet-img-s")
        rows = add(rows, name, run_dir, args.quiet_img_s, args.load, args.note, args.epochs)
        write_rows(rows)
    draw(rows)
    for r in rows:
        print(f"| {r['run']} | {r['epoch']}/{r['epochs']} | {float(r['top1']):.2f} | "
              f"{float(r['wall_s']) / 60:.1f} | {r['load']} | {quiet_minutes(r):.1f} |")


if __name__ == "__main__":
    main()
