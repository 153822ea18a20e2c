#!/usr/bin/env bash
# The model-side performance measurement (issue 8) on the lent GPU machine, in one command:
#   forward time per object count and mode (+ ratios to the fp32 reference and the published figure), fast-mode
#   pose error on the parity inputs and synthetic frames, GPU memory of an inference process for 0/1/6/20
#   objects, per-object input building (numpy / torch batched / CUDA graphs), and the per-stage breakdown.
# Device tool call: command "bash scripts/gpu_perf.sh", carry [".carry/perf_frames.npz"] (made here by
# `python bench/make_perf_frames.py --out .carry/perf_frames.npz`; it needs the rosbags writer, absent there).
# Writes under $OUT (or outputs/gpu_perf): perf.json, perf_scaling.png, stage_times.{json,md}, *.log.
# GPU_PERF_COUNTS overrides the object counts (default "1 2 4 6 8 16 32").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-outputs/gpu_perf}"
mkdir -p "$out"
frames=.carry/perf_frames.npz
[ -f "$frames" ] || echo "no $frames: the synthetic-frame error and input-building rows are skipped" >&2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.log"
# shellcheck disable=SC2086
python bench/perf.py --objects ${GPU_PERF_COUNTS:-1 2 4 6 8 16 32} --runs 100 --frames "$frames" --out "$out" \
    2>&1 | tee "$out/perf.log"
python bench/stage_times.py --attention math --objects 1 6 --runs 100 --out "$out" 2>&1 | tee "$out/stages.log"
