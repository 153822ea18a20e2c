#!/usr/bin/env bash
# Training speed of the PUBLISHED network configuration (cleanpose_nocs: frozen ViT-S/14 DINOv2, 96 keypoints,
# 36.8 M parameters) with the published per-iteration batch (40 objects), Adam + CyclicLR, fp32 (no TF32, no AMP),
# on the packed synthetic data (scripts/make_demo_data.sh DATA_DIR), for a fixed wall-clock budget. Random DINO
# weights: same compute.
#   bash scripts/train_speed_gpu.sh [DATA_DIR=outputs/demo_packed [NPROC=1]]   # NPROC > 1: DDP through
#                                                                              # torchrun, BS objects per GPU
# Env: BS (per-process batch, default 40), BUDGET (seconds of training, default 150), OUT.
# Writes $OUT/{train_summary.json (it_per_s, it_per_s_steady), scalars.csv, train.log}.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
data="$(realpath -m "${1:-outputs/demo_packed}")"
nproc_gpu="${2:-1}"
shift $(( $# >= 2 ? 2 : $# ))
out="${OUT:-runs/speed}"
mkdir -p "$out"
bs="${BS:-40}"
budget="${BUDGET:-150}"
py="${PYTHON:-python3}"
# NVLink multicast stays off (shared hosts); harmless where it is already set
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
ncpu="$(nproc)"
workers=$(( (ncpu - nproc_gpu) / nproc_gpu ))
[ "$workers" -lt 1 ] && workers=1
if [ "$nproc_gpu" -gt 1 ]; then
    launch=("$py" -m torch.distributed.run --standalone --nproc_per_node="$nproc_gpu" -m cleanpose_training.train)
else
    launch=("$py" -m cleanpose_training.train)
fi
{
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
    "${launch[@]}" --config training/configs/demo.yaml --set model=cleanpose_nocs \
        --set data.sources.0.root="$data/train" --set data.sources.0.batch_size="$bs" --set schedule.iterations=120000 --set schedule.time_budget_s=null \
        --set schedule.base_lr=2e-5 --set schedule.max_lr=5e-4 --set schedule.step_size_up=20000 \
        --set schedule.step_size_down=20000 --set trainer.clip_grad_norm=null --set trainer.tf32=false \
        --set trainer.amp=off --set trainer.max_seconds="$budget" --set trainer.workers="$workers" \
        --set trainer.log_every=20 --set trainer.ckpt_every=1000000 --set trainer.snapshots=false \
        --set trainer.tensorboard=false --set trainer.progress=false --set trainer.resume=never \
        --set trainer.out_dir="$out" --no-eval "$@"
} 2>&1 | tee "$out/train.log"
rm -rf "$out/ckpt" "$out/final.safetensors"
"$py" -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d.get(k) for k in ('world_size','global_batch','iterations','it_per_s','it_per_s_steady')})" "$out/train_summary.json"
