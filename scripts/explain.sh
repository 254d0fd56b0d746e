#!/usr/bin/env bash
# Draw what a model looks at: one PNG per image with its reading and the decoders' attention per character.
#   bash scripts/explain.sh GPU_ID|cpu CHECKPOINT IMAGES... [explain.py options, e.g. --method gradcam --all_passes]
# CHECKPOINT: a .ckpt file or a run folder (its best checkpoint), as a path or as a name under $OUTPUTS.
# IMAGES: image folders, files or glob patterns. Environment: OUTPUTS (default: outputs), OUT (default: explained).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/common.sh"
inference_args 3 "$0" "$@"
shift 2
python "$repo/explain.py" "$checkpoint" --device "$device" --out "${OUT:-explained}" "$@"
