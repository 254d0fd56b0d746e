#!/usr/bin/env bash
# Read the text in word images and print `file: text` per image.
#   bash scripts/read.sh GPU_ID|cpu CHECKPOINT IMAGES... [read.py options, e.g. --confidence --json]
# CHECKPOINT: a .ckpt file or a run folder (its best checkpoint), as a path or as a name under $OUTPUTS.
# IMAGES: image folders, files or glob patterns. Environment: OUTPUTS (default: outputs).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/common.sh"
inference_args 3 "$0" "$@"
shift 2
python "$repo/read.py" "$checkpoint" --device "$device" "$@"
