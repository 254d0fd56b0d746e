#!/usr/bin/env bash
# Evaluate a checkpoint on the benchmarks under $DATA_ROOT/test (missing ones are skipped with a warning).
#   bash scripts/test.sh GPU_ID|cpu CHECKPOINT [test.py options, e.g. --cased --punctuation]
# CHECKPOINT: a .ckpt file or a run folder (its best checkpoint), as a path or as a name under $OUTPUTS.
# Environment: DATA_ROOT (default: data), OUTPUTS (default: outputs).
set -euo pipefail
if [[ $# -lt 2 ]]; then
    sed -n '2,5p' "$0" >&2
    exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/common.sh"
use_device "$1"
checkpoint=$2
shift 2
[[ -e $checkpoint ]] || checkpoint="${OUTPUTS:-outputs}/$checkpoint"
python "$repo/test.py" "$checkpoint" --data_root "${DATA_ROOT:-data}" --device "$device" --new "$@"
