#!/usr/bin/env bash
# The demo model's one GPU command: train on the packed synthetic set (carried in .carry/demo_packed), evaluate on
# its held-out test split, and write everything to $OUT (or ./runs/demo_gpu):
#   final.safetensors  train_summary.json  eval.json  eval_table.md  scalars.csv  config.yaml  train.log
# Fits one 10-minute command: ~400 s of training (time-budgeted, see training/configs/demo.yaml) + set-up + eval.
# Extra arguments are passed to cleanpose-train (e.g. --set schedule.time_budget_s=300).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="${OUT:-runs/demo_gpu}"
mkdir -p "$out"
py="${PYTHON:-python3}"
[ -x "$repo/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && py="$repo/.venv/bin/python"
if [ ! -f .carry/demo_packed/train/meta.json ]; then
    echo "missing .carry/demo_packed/train: run scripts/make_demo_data.sh first (and carry .carry/demo_packed)" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt" || true
export PYTHONUNBUFFERED=1
"$py" -m training.train --config training/configs/demo.yaml --set trainer.out_dir="$out" --set trainer.resume=never \
    --set trainer.progress=false "$@" 2>&1 | tee "$out/train.log"
rm -f "$out/ckpt/train_state.pt"   # optimizer state: not needed for the demo checkpoint, keeps $OUT small
ls -la "$out"
