#!/usr/bin/env bash
# Read the text in word images and print `file: text` per image.
#   bash scripts/read.sh GPU_ID|cpu CHECKPOINT IMAGES... [read.py options, e.g. --confidence --json]
# CHECKPOINT: a .ckpt file or a run folder (its best checkpoint), as a path or as a name under $OUTPUTS.
# IMAGES: image folders, files or glob patterns. Environment: OUTPUTS (default: outputs).
set -euo pipefail
if [[ $# -lt 3 ]]; then
    sed -n '2,5p' "$0" >&2
    exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/common.sh"
use_device "$1"
checkpoint=$2
shift 2
[[ -e $checkpoint ]] || checkpoint="${OUTPUTS:-outputs}/$checkpoint"
python "$repo/read.py" "$checkpoint" --device "$device" "$@"
