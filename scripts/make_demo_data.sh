#!/usr/bin/env bash
# Render the demo model's synthetic training/test scenes (needs open3d, the training extras) and pack them per
# object into OUT_DIR/{train,test} (~33 MB), the data of scripts/train_demo_gpu.sh. Usage:
#   scripts/make_demo_data.sh [OUT_DIR=outputs/demo_packed] [TRAIN_SCENES=180] [TEST_SCENES=20] [FRAMES=4]
# (outputs/demo_packed is where training/configs/demo.yaml looks by default.)
# The work is `python -m cleanpose_training.datasets.packed demo` (make_demo_packs: fixed seeds, disjoint
# for train and test, so the same command gives the same data); this script supplies the shipped model's
# scene counts. Rendering runs at ~1.8 frames/s on one core (~8 minutes for the defaults); the raw renders go
# to a temporary directory and are deleted after packing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="${1:-outputs/demo_packed}"
py="${PYTHON:-$repo/.venv/bin/python}"
SECONDS=0
"$py" -m cleanpose_training.datasets.packed demo "$out" --train-scenes "${2:-180}" --test-scenes "${3:-20}" \
    --frames "${4:-4}"
echo "rendered and packed in $SECONDS s"
du -sh "$out"/*
