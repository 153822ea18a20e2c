#!/usr/bin/env bash
# Render the demo model's synthetic training/test scenes (needs open3d, the training extras) and pack them per
# object into OUT_DIR/{train,test} (~33 MB), the data of scripts/train_demo_gpu.sh. Usage:
#   scripts/make_demo_data.sh [OUT_DIR=outputs/demo_packed] [TRAIN_SCENES=180] [TEST_SCENES=20] [FRAMES=4]
# (outputs/demo_packed is where training/configs/demo.yaml looks by default.)
# Rendering runs at ~1.8 frames/s on one core (~8 minutes for the defaults); the raw renders go to a temporary
# directory and are deleted after packing. Seeds are fixed: the same command gives the same data.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="${1:-outputs/demo_packed}"
train_scenes="${2:-180}"
test_scenes="${3:-20}"
frames="${4:-4}"
py="${PYTHON:-$repo/.venv/bin/python}"
raw="$(mktemp -d "${TMPDIR:-/tmp}/demo_raw.XXXXXX")"
trap 'rm -rf "$raw"' EXIT

t0=$(date +%s)
# Train and test scenes come from disjoint seeds (distinct procedural objects, layouts and camera paths).
"$py" -m cleanpose_training.synthetic nocs --out "$raw/train" --split train --scenes "$train_scenes" --frames "$frames" \
    --seed 1 --results no
"$py" -m cleanpose_training.synthetic nocs --out "$raw/test" --split test --scenes "$test_scenes" --frames "$frames" \
    --seed 100001 --results no
t1=$(date +%s)
"$py" -m cleanpose_training.datasets.packed pack "$raw/train" "$out/train" --max-points 800 --jpeg-quality 75 --seed 1
"$py" -m cleanpose_training.datasets.packed pack "$raw/test" "$out/test" --split test --max-points 800 \
    --jpeg-quality 75 --seed 2
t2=$(date +%s)
echo "rendered in $((t1 - t0)) s, packed in $((t2 - t1)) s"
du -sh "$out"/*
