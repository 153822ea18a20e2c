#!/usr/bin/env bash
# The demo model's one GPU command: train on the packed synthetic set (carried in .carry/demo_packed), evaluate on
# its held-out test split, and write the results to $OUT (or ./runs/demo_gpu).
# Fits one 10-minute command: ~400 s of training (time-budgeted, see training/configs/demo.yaml) + set-up + eval.
# The device tool returns at most 8 files of <= 16 MiB from $OUT, so the 17.5 MB checkpoint is split in two parts
# (python -m cleanpose_training.demo_readme joins them) and nothing else is left there:
#   final.safetensors.part00/01  train_summary.json  eval.json  eval_table.md  scalars.csv  config.yaml  train.log
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
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    "$py" -m cleanpose_training.train --config training/configs/demo.yaml --set trainer.out_dir="$out" \
        --set trainer.resume=never --set trainer.progress=false --set trainer.tensorboard=false "$@"
} 2>&1 | tee "$out/train.log"
rm -rf "$out/ckpt"   # resumable state (optimizer moments): not part of the demo checkpoint
if [ -f "$out/final.safetensors" ]; then
    sha256sum "$out/final.safetensors" | tee -a "$out/train.log"
    split -b 15000000 -d "$out/final.safetensors" "$out/final.safetensors.part"
    rm "$out/final.safetensors"
fi
ls -la "$out"
