#!/usr/bin/env bash
# CLIP4STR-L: ViT-L/14 from OpenCLIP's DataComp-XL weights, trained 5 epochs on RBU(6.5M) as the original.
#   bash scripts/vl4str_large.sh [Hydra overrides]
# Keep NODES x GPUS x ACCUM x BATCH = 1024: the accumulation is derived from the others (4 GPUs x 4 x 64 here).
# Environment: DATA_ROOT (default: data), CLIP_DIR (default: pretrained/clip), GPUS (4), BATCH (64 per GPU),
#   NODES (1), LAUNCHER (default: python; "srun python" or "torchrun ..." for several nodes).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/common.sh"
train_on_clip 4 64 vl4str-large OpenCLIP-ViT-L-14-DataComp-XL-s13B-b90K.bin \
    trainer.max_epochs=5 trainer.val_check_interval=10000 "$@"
