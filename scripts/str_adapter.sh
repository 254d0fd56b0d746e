#!/usr/bin/env bash
# STR-Adapter (the paper's "CLIP + adapter" baseline) as the original's script: OpenAI's ViT-B/16 frozen, a pruned
# ladder side network (adapter_type=ladder_pruning, block_ids=[1,3,5,7,9,11], prune_reduction=8), 16 epochs on Real,
# base lr 8e-4 (PARSeq's rule: x accumulation x sqrt(GPUs) x batch / 256).
#   bash scripts/str_adapter.sh [Hydra overrides, e.g. model.adapter_type=ladder model.lr=8.4e-5]
# Keep NODES x GPUS x ACCUM x BATCH = 1024: the accumulation is derived from the others (2 GPUs x 512 here).
# Environment: DATA_ROOT (default: data), CLIP_DIR (default: pretrained/clip), GPUS (2), BATCH (512 per GPU),
#   NODES (1), LAUNCHER (default: python; "srun python" or "torchrun ..." for several nodes).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/common.sh"
train_on_clip 2 512 str_adapter ViT-B-16.pt \
    model.lr=8e-4 trainer.max_epochs=16 "$@"
