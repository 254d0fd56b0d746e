# Sourced by the scripts in this folder.

# use_device GPU_ID|cpu: sets $device; a GPU id (or a comma-separated list) becomes CUDA_VISIBLE_DEVICES.
use_device() {
    if [[ $1 == cpu ]]; then
        device=cpu
    else
        export CUDA_VISIBLE_DEVICES=$1
        device=cuda
    fi
}

# released_name NAME: whether NAME is a name, alias or file name of a released checkpoint in the catalogue
# (strhub/hub/released.yaml, or $STRHUB_CATALOGUE), which the Python scripts download and cache.
released_name() {
    local name=${1//./\\.}
    grep -qE "^\s*(- )?(name|file): $name\$|^\s*aliases: \[(.*, )?$name(, .*)?\]\$" \
        "${STRHUB_CATALOGUE:-$repo/strhub/hub/released.yaml}" 2>/dev/null
}

# inference_args MIN_ARGS SCRIPT ARGS...: prints the script's usage and exits when fewer than MIN_ARGS arguments are
# given; otherwise sets $device from the first argument and $checkpoint from the second (a path, a name under
# $OUTPUTS, default outputs, or a released checkpoint's name; none: an error naming the checkpoint as typed). The
# caller then drops both with `shift 2`.
inference_args() {
    local min_args=$1 script=$2
    shift 2
    if [[ $# -lt $min_args ]]; then
        sed -n '2,5p' "$script" >&2
        exit 2
    fi
    use_device "$1"
    checkpoint=$2
    if [[ ! -e $checkpoint ]]; then
        checkpoint="${OUTPUTS:-outputs}/$2"
        if released_name "$2" && [[ ! -e $checkpoint ]]; then
            checkpoint=$2
        elif [[ ! -e $checkpoint ]]; then
            echo "$(basename "$script"): error: checkpoint not found: $2 (neither a path from here nor a name under" \
                "OUTPUTS=${OUTPUTS:-outputs})" >&2
            exit 2
        fi
    fi
}

# batch_rule: NODES x GPUS x ACCUM x BATCH = 1024, the effective batch of the paper (the learning rate is scaled
# by it / 512). Reads NODES, GPUS and BATCH (per GPU) with the given defaults, sets $nodes $gpus $batch $accum.
batch_rule() {
    nodes=${NODES:-1}
    gpus=${GPUS:-$1}
    batch=${BATCH:-$2}
    local per_step=$((nodes * gpus * batch))
    if (( per_step > 1024 || 1024 % per_step )); then
        echo "NODES x GPUS x BATCH = $nodes x $gpus x $batch = $per_step must divide 1024" >&2
        exit 2
    fi
    accum=$((1024 / per_step))
    echo "Effective batch: $nodes node(s) x $gpus GPU(s) x $accum accumulation x $batch images = 1024"
}

# train_experiment DEFAULT_GPUS DEFAULT_BATCH EXPERIMENT [OVERRIDES...]: trains EXPERIMENT on $DATA_ROOT (default
# data; dataset=real) under the 1024 rule (see batch_rule), launched with $LAUNCHER (default python). OVERRIDES come
# last, so the caller's and the user's Hydra overrides win.
train_experiment() {
    batch_rule "$1" "$2"
    local experiment=$3
    shift 3
    ${LAUNCHER:-python} "$repo/train.py" +experiment="$experiment" dataset=real data.root_dir="${DATA_ROOT:-data}" \
        model.batch_size="$batch" trainer.accumulate_grad_batches="$accum" \
        trainer.devices="$gpus" trainer.num_nodes="$nodes" "$@"
}

# train_on_clip DEFAULT_GPUS DEFAULT_BATCH EXPERIMENT CLIP_FILE [OVERRIDES...]: train_experiment from the CLIP weights
# $CLIP_DIR/CLIP_FILE (CLIP_DIR default: pretrained/clip).
train_on_clip() {
    local gpus=$1 batch=$2 experiment=$3 clip_file=$4
    shift 4
    train_experiment "$gpus" "$batch" "$experiment" model.clip_pretrained="${CLIP_DIR:-pretrained/clip}/$clip_file" "$@"
}
