#!/usr/bin/env bash
# CLIP4STR-H: ViT-H/14 from Apple's DFN-5B weights, trained 4 epochs on RBU(6.5M) as the original
# (for the LAION-2B model: model.clip_pretrained=$CLIP_DIR/OpenCLIP-ViT-H-14-laion2B-s32B-b79K.bin).
#   bash scripts/vl4str_huge.sh [Hydra overrides]
# Keep NODES x GPUS x ACCUM x BATCH = 1024: the accumulation is derived from the others (4 GPUs x 8 x 32 here).
# Environment: DATA_ROOT (default: data), CLIP_DIR (default: pretrained/clip), GPUS (4), BATCH (32 per GPU),
#   NODES (1), LAUNCHER (default: python; "srun python" or "torchrun ..." for several nodes).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/common.sh"
train_on_clip 4 32 vl4str-huge appleDFN5B-CLIP-ViT-H-14.bin \
    trainer.max_epochs=4 trainer.val_check_interval=10000 "$@"
