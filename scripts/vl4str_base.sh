#!/usr/bin/env bash
# CLIP4STR-B: ViT-B/16 from OpenCLIP's DataComp-XL weights, trained 11 epochs on RBU(6.5M) as the original.
#   bash scripts/vl4str_base.sh [Hydra overrides, e.g. trainer.max_epochs=16 dataset=synth]
# Keep NODES x GPUS x ACCUM x BATCH = 1024: the accumulation is derived from the others (4 GPUs x 256 here).
# Environment: DATA_ROOT (default: data; holds train/, val/, test/; RBU is the original's str_dataset_ub),
#   CLIP_DIR (default: pretrained/clip), GPUS (4), BATCH (256 per GPU), NODES (1),
#   LAUNCHER (default: python; e.g. "srun python" or "torchrun --nnodes 2 --nproc-per-node 4 ..." for several nodes).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/common.sh"
train_on_clip 4 256 vl4str OpenCLIP-ViT-B-16-DataComp-XL-s13B-b90K.bin \
    trainer.max_epochs=11 "$@"
