#!/usr/bin/env bash
# PARSeq-B (CLIP4STR's PARSeq baseline) as the original's script: a ViT-B/16 encoder from scratch on 224x224 images,
# 16 epochs on Real, base lr 8.4e-5 (PARSeq's rule: x accumulation x sqrt(GPUs) x batch / 256). The other PARSeq
# experiments (parseq, parseq-tiny, parseq-patch16-224, parseq-mini) train with `python train.py +experiment=NAME`.
#   bash scripts/parseq.sh [Hydra overrides]
# Keep NODES x GPUS x ACCUM x BATCH = 1024: the accumulation is derived from the others (4 GPUs x 256 here).
# Environment: DATA_ROOT (default: data), GPUS (4), BATCH (256 per GPU), NODES (1),
#   LAUNCHER (default: python; "srun python" or "torchrun ..." for several nodes).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/common.sh"
train_experiment 4 256 parseq-base \
    model.lr=8.4e-5 trainer.max_epochs=16 "$@"
