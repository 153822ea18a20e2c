#!/usr/bin/env bash
# The model-side benchmark suites on a CUDA machine, in one command (python -m benchmarks, see its --help):
#   forward (exact and fast, 1/6/16 objects), kernels (Triton vs torch reference), memory (fresh process per
#   row), preprocess (numpy vs torch forms). Tables on stdout, <suite>.json + <suite>.log under OUT_DIR.
#
#   bash scripts/gpu_perf.sh OUT_DIR [BASELINE_ROOT] [FRAMES_NPZ]
#
# BASELINE_ROOT: the root of a checkout of another commit (e.g. `git worktree add /tmp/before <commit>`): the
#   forward suite then times both trees in the same run, alternating, and tables current / baseline.
# FRAMES_NPZ: frames written by scripts/make_perf_frames.py for the preprocess suite (default: generated).
# Env: COUNTS (object counts, default "1 6 16"), ITERATIONS (default 100), ROUNDS (forward, default 3),
#   SUITES (default "forward kernels memory preprocess"), PYTHON.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:?usage: scripts/gpu_perf.sh OUT_DIR [BASELINE_ROOT] [FRAMES_NPZ]}"
baseline="${2:-}"
frames="${3:-}"
py="${PYTHON:-python3}"
counts="${COUNTS:-1 6 16}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.log"
for suite in ${SUITES:-forward kernels memory preprocess}; do
    args=(--out "$out")
    case "$suite" in
        # shellcheck disable=SC2206
        forward) args+=(--objects $counts --iterations "${ITERATIONS:-100}" --rounds "${ROUNDS:-3}")
            [ -n "$baseline" ] && args+=(--baseline-root "$baseline") ;;
        # shellcheck disable=SC2206
        memory) args+=(--objects 0 $counts)
            [ -n "$baseline" ] && args+=(--baseline-root "$baseline") ;;
        # shellcheck disable=SC2206
        kernels) args+=(--objects $counts --iterations "${ITERATIONS:-100}") ;;
        # shellcheck disable=SC2206
        preprocess) args+=(--objects $counts --iterations "${ITERATIONS:-100}")
            [ -n "$frames" ] && args+=(--frames "$frames") ;;
    esac
    "$py" -m benchmarks "$suite" "${args[@]}" 2>&1 | tee "$out/$suite.log"
done
