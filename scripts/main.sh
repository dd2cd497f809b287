#!/usr/bin/env bash
# The main job: train sknet_fmnist on Fashion-MNIST with torchrun on 2 CPU workers, convert the
# checkpoint to MindSpore, evaluate it with MindSpore and with PyTorch, print both test accuracies.
# A fresh machine is set up first (scripts/setup.sh: Debian's Fashion-MNIST, .venv, the package).
#   OUT=runs/main  NPROC=2  [PORT=N]  [EPOCHS=N]  [SETS="--set key=value ..."]  scripts/main.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/sknet ] || [ ! -d /usr/share/datasets/fashion-mnist ]; then
    scripts/setup.sh
fi
OUT=${OUT:-runs/main}
# The recipe decides epochs and augmentation; EPOCHS/SETS override it for experiments.
EPOCHS=${EPOCHS:-}
SETS=${SETS:-}
EPOCH_ARGS=()
[ -n "$EPOCHS" ] && EPOCH_ARGS=(--epochs "$EPOCHS")
NPROC=${NPROC:-2}
RECIPE=fashion_mnist
# One thread per worker: NPROC workers on NPROC cores, no oversubscription.
export OMP_NUM_THREADS=1 GLOG_v=3
rm -rf "$OUT/torch"
mkdir -p "$OUT"
t0=$(date +%s)

echo "== train: torchrun --nproc_per_node=$NPROC, recipe $RECIPE ${EPOCHS:+($EPOCHS epochs)} $SETS"
# --standalone rendezvouses on a free port, so two jobs on one machine never collide; PORT=N asks
# for that port instead, refused in one line if it is in use (sknet.launch).
LAUNCH=(.venv/bin/torchrun --standalone)
[ -n "${PORT:-}" ] && LAUNCH=(.venv/bin/python -m sknet.launch torchrun --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:"$PORT")
"${LAUNCH[@]}" --nproc_per_node="$NPROC" -m sknet.train --config "$RECIPE" \
    --backend torch "${EPOCH_ARGS[@]}" $SETS --out "$OUT/torch" 2>&1 | grep --line-buffered -v -E "^(W[0-9]{4}|\*+$|Setting OMP)"
t1=$(date +%s)

echo "== convert to MindSpore"
.venv/bin/sknet convert "$OUT/torch/last.pth" "$OUT/sknet_fmnist.ckpt"

echo "== evaluate the test split on both backends"
.venv/bin/sknet validate --config "$RECIPE" --checkpoint "$OUT/sknet_fmnist.ckpt" --backend mindspore --json > "$OUT/eval_mindspore.json"
.venv/bin/sknet validate --config "$RECIPE" --checkpoint "$OUT/torch/last.pth" --backend torch --json > "$OUT/eval_torch.json"
t2=$(date +%s)

.venv/bin/python - "$OUT" "$((t1 - t0))" "$((t2 - t0))" <<'PY'
import json, sys
out, train_s, total_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pt = json.load(open(f"{out}/eval_torch.json"))
ms = json.load(open(f"{out}/eval_mindspore.json"))
print()
print(f"{'':24}{'PyTorch':>12}{'MindSpore':>12}")
print(f"{'checkpoint':24}{'last.pth':>12}{'.ckpt':>12}")
for key, label in (("top1", "test top-1 (%)"), ("top5", "test top-5 (%)"), ("loss", "test loss")):
    print(f"{label:24}{pt[key]:12.2f}{ms[key]:12.2f}" if key != "loss" else f"{label:24}{pt[key]:12.4f}{ms[key]:12.4f}")
print(f"{'images':24}{pt['n']:12d}{ms['n']:12d}")
print(f"top-1 difference: {abs(pt['top1'] - ms['top1']):.2f} points; training {train_s // 60}m{train_s % 60:02d}s, "
      f"whole job {total_s // 60}m{total_s % 60:02d}s")
json.dump({"torch": pt, "mindspore": ms, "train_s": train_s, "total_s": total_s}, open(f"{out}/summary.json", "w"), indent=1)
PY
