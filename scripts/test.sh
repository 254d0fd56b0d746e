#!/usr/bin/env bash
# Evaluate a checkpoint on the benchmarks under $DATA_ROOT/test (missing ones are skipped with a warning).
#   bash scripts/test.sh GPU_ID|cpu CHECKPOINT [test.py options, e.g. --cased --union14m --ost --ltb --protocol parseq]
# CHECKPOINT: a .ckpt file or a run folder (its best checkpoint), as a path or as a name under $OUTPUTS.
# Environment: DATA_ROOT (default: data), OUTPUTS (default: outputs).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/common.sh"
inference_args 2 "$0" "$@"
shift 2
python "$repo/test.py" "$checkpoint" --data_root "${DATA_ROOT:-data}" --device "$device" --new "$@"
