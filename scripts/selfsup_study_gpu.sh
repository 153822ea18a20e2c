#!/usr/bin/env bash
# The issue-16 study in ONE command on one GPU (python -m cleanpose_training.selfsup.study run: stage 1, the
# full model, the supervised CleanPose baseline, the domain-shift pair, the four ablations, evaluation on
# held-out frames, tables, the <= 20 MB demo checkpoint + model card), written to OUT_DIR:
#   bash scripts/selfsup_study_gpu.sh OUT_DIR [DATA_DIR=outputs/selfsup_study_data]
# Budgets (wall clock, concurrent runs sharing the GPU): stage 1 T1=90 s, each of the 6 stage-2 runs T2=90 s,
# the supervised baseline T1+T2; ~5-6 minutes in all on an H200 (startup, evaluation and the selfsup
# forward benchmark on the GPU included).
# The data is rendered beforehand where Open3D is installed (the GPU box has none; ~50 MB):
#   python -m cleanpose_training.selfsup.study data outputs/selfsup_study_data
# Needs no install: the repository root on PYTHONPATH and a link that names training/ cleanpose_training.
# SMOKE=1: the same pipeline with the tiny network, 2 steps per run, on the CPU (DATA_DIR made with --smoke).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="$(realpath -m "${1:?usage: selfsup_study_gpu.sh OUT_DIR [DATA_DIR]}")"
data="$(realpath -m "${2:-outputs/selfsup_study_data}")"
mkdir -p "$out"
py="${PYTHON:-python3}"
[ -x "$repo/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && py="$repo/.venv/bin/python"
if [ ! -f "$data/a/train_list_all.txt" ]; then
    echo "missing $data/a/train_list_all.txt: render the data with" \
        "'python -m cleanpose_training.selfsup.study data $data' where Open3D is installed" >&2
    exit 2
fi
if ! "$py" -c "import cleanpose_training" 2>/dev/null; then
    # The on-disk folder training/ is the package cleanpose_training (setup.py maps it): a temporary link
    # gives an uninstalled checkout the same name, with nothing duplicated in the repository.
    shim="$(mktemp -d)"
    trap 'rm -rf "$shim"' EXIT
    ln -s "$repo/training" "$shim/cleanpose_training"
    export PYTHONPATH="$shim:$repo${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
args=(--t1 "${T1:-90}" --t2 "${T2:-90}")
if [ "${SMOKE:-0}" = 1 ]; then
    args=(--smoke --device cpu --workers 0 --jobs 1 --threads 1)
else
    # 16 cores: stage 1 shares them with the supervised run only; phase 2 runs six processes at once.
    args+=(--device cuda --workers 2 --stage1-workers 6 --jobs 8 --threads 2)
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    start=$SECONDS
    "$py" -m cleanpose_training.selfsup.study run "$out" --data "$data" "${args[@]}"
    echo "[selfsup_study_gpu] study $((SECONDS - start)) s"
    if [ "${SMOKE:-0}" != 1 ]; then
        # The family's GPU speed per object count (issue 16 point 4), both shipped sizes; ~1 minute.
        for cfg in selfsup_study selfsup; do
            "$py" -m benchmarks forward --family selfsup --selfsup-config "$cfg" --device cuda \
                --objects 1 6 16 --iterations 50 --out "$out/bench_$cfg"
        done
    fi
    echo "[selfsup_study_gpu] total $((SECONDS - start)) s"
} 2>&1 | tee "$out/study.log"
# Only the demo checkpoint comes back: the runs' weights and optimizer states are not results.
rm -rf "$out"/runs/*/train_state.pt "$out"/runs/*/model.safetensors "$out"/runs/*/final.safetensors \
    "$out"/runs/*/ckpt "$out"/eval/*/results
if [ "${SMOKE:-0}" != 1 ] && [ -f "$out/selfsup_demo.safetensors" ]; then
    # Result files over 16 MiB do not come back from the GPU box: parts of <= 15 MB, joined with
    #   cat selfsup_demo.safetensors.part* > selfsup_demo.safetensors   (sha256 in study.log)
    sha256sum "$out/selfsup_demo.safetensors" | tee -a "$out/study.log"
    split -b 15000000 -d "$out/selfsup_demo.safetensors" "$out/selfsup_demo.safetensors.part"
    rm "$out/selfsup_demo.safetensors"
fi
ls -la "$out"
