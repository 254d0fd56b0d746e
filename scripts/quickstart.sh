#!/usr/bin/env bash
# A first run on a CPU-only machine, from a fresh clone: install, render synthetic words, train a small CLIP4STR whose
# CLIP starts from random weights (no weight file), evaluate it on held-out words with test.sh, and read
# misc/test_images with read.sh. docs/benchmarking.md gives the times measured on a 2-core machine.
#   bash scripts/quickstart.sh
# Environment: QUICKSTART_STEPS (training steps, default 600), QUICKSTART_MAX_TIME (a wall-time limit for training,
# DD:HH:MM:SS, default none: the closing lines say at which step it stopped and why), SKIP_INSTALL=1 (skip pip),
# OMP_NUM_THREADS (torch's threads, default: the CPUs less the one the data-loading process takes, at least 1),
# QUICKSTART_PRECISION (trainer.precision, default 32; bf16-mixed on a CPU with avx512_bf16 or amx_bf16: see
# docs/cpu_speed.md for when it pays).
# Everything it writes goes to data/quickstart and outputs/quickstart.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data=data/quickstart
run=outputs/quickstart
steps=${QUICKSTART_STEPS:-600}
cpus=$(nproc)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cpus > 2 ? cpus - 1 : 1 ))}
stage() { echo; echo "=== $(date +%H:%M:%S) $*"; }

if [[ ${SKIP_INSTALL:-0} != 1 ]]; then
    stage "1/5 Installing strhub and its requirements"
    python -m pip install -r requirements.txt
    python -m pip install -e .
fi

stage "2/5 Rendering synthetic words into $data (train, val and a held-out test set)"
python -m strhub.tools.render_words "$data" --train 19200 --val 256 --test 512 --workers 2 --overwrite

stage "3/5 Training the tiny config on the CPU for $steps steps, $OMP_NUM_THREADS torch thread(s) (random CLIP; loss" \
    "and val_accuracy are logged every 100 steps)"
rm -rf "$run"
python train.py +experiment=tiny dataset=custom data.root_dir="$data" data.num_workers=1 \
    trainer.accelerator=cpu trainer.devices=1 trainer.precision="${QUICKSTART_PRECISION:-32}" \
    trainer.max_steps="$steps" \
    trainer.val_check_interval=100 trainer.log_every_n_steps=10 trainer.max_time="${QUICKSTART_MAX_TIME:-null}" \
    seed=0 hydra.run.dir="$run"

stage "4/5 Evaluating the best checkpoint on the held-out synthetic words"
DATA_ROOT="$data" bash scripts/test.sh cpu "$run" --datasets synth --num_workers 1

stage "5/5 Reading misc/test_images (real photos)"
bash scripts/read.sh cpu "$run" misc/test_images --confidence

stage "Done. $(grep -o 'Training ended at .*' "$run/train.log" | tail -1)."
echo "A random CLIP trained for a few CPU minutes only starts to learn: expect a falling loss and near-zero accuracy."
echo "Real models start from CLIP weights and train on millions of images on GPUs: see README.md."
