#!/usr/bin/env bash
# CLIP4STR-L: ViT-L/14 from OpenCLIP's DataComp-XL weights, trained 5 epochs on RBU(6.5M) as the original.
#   bash scripts/vl4str_large.sh [Hydra overrides]
# Keep NODES x GPUS x ACCUM x BATCH = 1024: the accumulation is derived from the others (4 GPUs x 4 x 64 here).
# Environment: DATA_ROOT (default: data), CLIP_DIR (default: pretrained/clip), GPUS (4), BATCH (64 per GPU),
#   NODES (1), LAUNCHER (default: python; "srun python" or "torchrun ..." for several nodes).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/common.sh"
batch_rule 4 64
${LAUNCHER:-python} "$repo/train.py" +experiment=vl4str-large dataset=real \
    data.root_dir="${DATA_ROOT:-data}" \
    model.clip_pretrained="${CLIP_DIR:-pretrained/clip}/OpenCLIP-ViT-L-14-DataComp-XL-s13B-b90K.bin" \
    model.lr=8.4e-5 model.batch_size="$batch" trainer.accumulate_grad_batches="$accum" \
    trainer.devices="$gpus" trainer.num_nodes="$nodes" trainer.max_epochs=5 trainer.val_check_interval=10000 "$@"
