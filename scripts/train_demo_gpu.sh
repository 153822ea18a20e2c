#!/usr/bin/env bash
# The demo model's one GPU command: train on the packed synthetic set (scripts/make_demo_data.sh DATA_DIR),
# evaluate on its held-out test split, and write the results to OUT_DIR (default ./runs/demo_gpu).
#   bash scripts/train_demo_gpu.sh [DATA_DIR=outputs/demo_packed [OUT_DIR [cleanpose-train args]]]
# e.g. bash scripts/train_demo_gpu.sh outputs/demo_packed runs/demo_gpu --set schedule.time_budget_s=300
# Fits one 10-minute command: ~400 s of training (time-budgeted, see training/configs/demo.yaml) + set-up + eval.
# The 17.5 MB checkpoint is split into parts of <= 15 MB, so no result file exceeds 16 MiB
# (python -m cleanpose_training.demo_readme joins them); OUT_DIR keeps nothing else:
#   final.safetensors.part00/01  train_summary.json  eval.json  eval_table.md  scalars.csv  config.yaml  train.log
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
data="$(realpath -m "${1:-outputs/demo_packed}")"
out="$(realpath -m "${2:-runs/demo_gpu}")"
shift $(( $# >= 2 ? 2 : $# ))
mkdir -p "$out"
py="${PYTHON:-python3}"
[ -x "$repo/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && py="$repo/.venv/bin/python"
if [ ! -f "$data/train/meta.json" ]; then
    echo "missing $data/train/meta.json: make the data with scripts/make_demo_data.sh $data" >&2
    exit 2
fi
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    "$py" -m cleanpose_training.train --config training/configs/demo.yaml --set trainer.out_dir="$out" \
        --set data.sources.0.root="$data/train" --set eval.packed_test="$data/test" \
        --set trainer.resume=never --set trainer.progress=false --set trainer.tensorboard=false "$@"
} 2>&1 | tee "$out/train.log"
rm -rf "$out/ckpt"   # resumable state (optimizer moments): not part of the demo checkpoint
if [ -f "$out/final.safetensors" ]; then
    sha256sum "$out/final.safetensors" | tee -a "$out/train.log"
    split -b 15000000 -d "$out/final.safetensors" "$out/final.safetensors.part"
    rm "$out/final.safetensors"
fi
ls -la "$out"
