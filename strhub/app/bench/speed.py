"""Inference and training speed of a model (CLIP4STR-B/16 by default; any experiment or checkpoint of
the three families), with the image encoder's share split out: at inference the encoder is timed inside
each forward pass; for training, its forward and backward are timed alone.

Each measurement runs in a fresh process so that its peak memory (VmHWM) is its own; inference runs
the plain model, as `read.py` does, without importing Lightning. Weights are
random (or read from `--weights`, a checkpoint or a state dict in the original's layout, so that other
implementations can be measured on the very same weights). Inputs are fixed by `--seed`: images
`randn(B, 3, H, W)` clamped to [-1, 1] with generator seed + B; labels random over the training
charset, 1 to 25 characters (or to --label-length), the first that long, or as long as labels drawn from
a dataset (`--lengths-from`: the step time depends on how many characters the batch holds).

    python bench.py speed                      # B/16, 224x224, fp32, batches 1 and 8, training at 8
    python bench.py speed --device cuda --precision bf16 --batches 1 256 --train-batch 128
    python bench.py speed --experiment tiny --charset-file chars.txt --train-batch 64   # a large charset
    python bench.py speed --experiment tiny --train-batch 32 --lengths-from data/train/real   # real label lengths
    python bench.py speed --experiment parseq --batches 1 64
"""
import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from strhub.app.bench.rates import counted_flops, describe_rates, matmul_rates, precision_name
from strhub.app.common import Parser, count
from strhub.host import (
    INFERENCE_PRECISIONS,
    autocast_context,
    choose_precision,
    inference_precision,
    peak_memory,
    reset_peak_memory,
    reuse_freed_memory,
    synchronize,
    timed,
)
from strhub.models.checkpoint import load_model
from strhub.models.recognizer import Recognizer
from strhub.models.registry import build_random
from strhub.tokenizer import load_charset
from strhub.training.measure import TrainingStep, run_in_fresh_process, training_labels


class EncoderClock:
    """Stands in for the model's `encode` and times each call of it."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> None:
        self.encode, self.device, self.seconds = encode, device, []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        synchronize(self.device)
        start = time.perf_counter()
        memory = self.encode(images)
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - start)
        return memory


def dataset_label_lengths(path: str) -> List[int]:
    """The lengths of the labels of an LMDB, of every LMDB under a folder, or of a text file (a label per line)."""
    from strhub.data.dataset import find_lmdbs, lmdb_labels

    root = Path(path)
    if root.is_file():
        return [len(line) for line in root.read_text(encoding="utf-8-sig").splitlines() if line]
    lengths = [len(label) for lmdb_root in find_lmdbs(root) for label in lmdb_labels(lmdb_root)]
    if not lengths:
        raise SystemExit(f"--lengths-from {path}: no labels there (an LMDB, a folder of LMDBs or a text file)")
    return lengths


def charset_overrides(args: argparse.Namespace) -> Dict[str, str]:
    """`charset_train` and `charset_test` from `--charset-file`, or nothing (the config's charsets)."""
    if not args.charset_file:
        return {}
    charset = load_charset(args.charset_file)
    return {"charset_train": charset, "charset_test": charset}


def build_plain(args: argparse.Namespace) -> Recognizer:
    """The plain model, as inference uses it (Lightning is not imported)."""
    if args.weights:
        model = load_model(args.weights)
    else:
        torch.manual_seed(0)
        model = build_random(args.experiment, **charset_overrides(args))
    if args.compile:
        compile_encoder(model)
    return model


def compile_encoder(model: Recognizer) -> None:
    if not hasattr(model, "compile_image_encoder"):
        raise SystemExit(f"--compile: {type(model).__name__} has no compiled image encoder (CLIP4STR has)")
    model.compile_image_encoder()


def build_system(args: argparse.Namespace):
    """The Lightning system, as training uses it."""
    from strhub.models.utils import load_from_checkpoint

    if args.weights:
        system = load_from_checkpoint(args.weights)
    else:
        torch.manual_seed(0)
        system = build_random(args.experiment, system=True, **charset_overrides(args))
    system.model.set_grad_checkpointing(args.grad_checkpointing, args.grad_checkpointing_decoder)
    if args.compile:
        compile_encoder(system.model)
    return system


def measure(args: argparse.Namespace, task: str, batch: int) -> Dict[str, Any]:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    reuse_freed_memory()
    device = torch.device(args.device)
    training = task == "training"
    model = (build_system(args) if training else build_plain(args)).to(device).train(training)
    reset_peak_memory(device)
    height, width = model.hparams.img_size if training else model.image_size
    generator = torch.Generator().manual_seed(args.seed + batch)
    images = torch.randn(batch, 3, height, width, generator=generator).clamp(-1, 1).to(device)
    result: Dict[str, Any] = {"task": task, "batch": batch}
    if task == "inference":
        clock = model.encode = EncoderClock(model.encode, device)
        with torch.inference_mode(), inference_precision(model, device, args.precision):
            result["encoder_flops"] = counted_flops(lambda: clock.encode(images))
            result["flops"] = counted_flops(lambda: model(images))
            totals = timed(lambda: model(images), device, args.warmup, args.repeats)
        encoder = clock.seconds[-args.repeats:]
        result["seconds"] = statistics.median(totals)
        result["encoder_seconds"] = statistics.median(encoder)
        result["after_encoder_seconds"] = statistics.median(t - e for t, e in zip(totals, encoder))
    else:
        max_length = min(args.label_length or model.hparams.max_label_length, model.hparams.max_label_length)
        labels = training_labels(model.hparams.charset_train, batch, max_length, args.seed, args.label_lengths)
        step = TrainingStep(model, images, labels, autocast_context(device, args.precision))

        def encoder_step() -> None:
            with autocast_context(device, args.precision):
                memory = model.model.encode(images)
            memory.float().mean().backward()
            step.optimizer.zero_grad(set_to_none=True)

        result["flops"], result["encoder_flops"] = counted_flops(step), counted_flops(encoder_step)
        result["seconds"] = statistics.median(timed(step, device, args.warmup, args.repeats))
        result["encoder_seconds"] = statistics.median(timed(encoder_step, device, args.warmup, args.repeats))
        result["after_encoder_seconds"] = result["seconds"] - result["encoder_seconds"]
    result["peak_memory_mib"] = peak_memory(device) / 2**20
    return result


def report(result: Dict[str, Any], rate: float) -> str:
    """A result's line; the arithmetic rates of the encoder and of the whole as fractions of the matmul `rate`."""
    seconds, encoder, rest = result["seconds"], result["encoder_seconds"], result["after_encoder_seconds"]
    return (f"{result['task']:<9} batch {result['batch']:>4}: {seconds * 1000:9.1f} ms "
            f"({result['batch'] / seconds:8.1f} img/s) | encoder {encoder * 1000:9.1f} ms "
            f"({100 * result['encoder_flops'] / encoder / rate:4.1f}% of the matmul rate) "
            f"| after encoder {rest * 1000:8.1f} ms ({100 * rest / seconds:4.1f}%) "
            f"| all {100 * result['flops'] / seconds / rate:4.1f}% of the matmul rate "
            f"| peak {result['peak_memory_mib']:8.0f} MiB")


def main(argv: Optional[List[str]] = None) -> None:
    parser = Parser(__doc__, prog="bench.py speed")
    parser.add_argument("--experiment", default="vl4str", help="experiment config (random weights)")
    parser.add_argument("--weights", help="checkpoint to load instead of random weights")
    parser.add_argument("--charset-file", help="train and test charset, one character per line (random weights only)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32", choices=INFERENCE_PRECISIONS,
                        help="inference: bf16 stores the weights in bfloat16 once, 16 autocasts; training autocasts")
    parser.add_argument("--batches", type=count(1), nargs="+", default=[1, 8], help="inference batch sizes")
    parser.add_argument("--train-batch", type=count(0), default=8, help="training batch size (0: skip)")
    parser.add_argument("--label-length", type=count(0), default=0,
                        help="longest training label (0: the model's max_label_length, 25)")
    parser.add_argument("--lengths-from", help="training labels as long as those of this dataset (an LMDB, a folder "
                        "of LMDBs or a text file of labels), their characters random")
    parser.add_argument("--compile", action="store_true", help="compile the image encoder (torch.compile)")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="training: recompute the encoder blocks in the backward pass")
    parser.add_argument("--grad-checkpointing-decoder", action="store_true",
                        help="training: recompute the decoder layers in the backward pass")
    parser.add_argument("--warmup", type=count(0), default=2)
    parser.add_argument("--repeats", type=count(1), default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs (images: seed + batch)")
    parser.add_argument("--threads", type=count(0), default=0, help="CPU threads (0: PyTorch's default)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.weights and args.charset_file:
        parser.error("--charset-file sets the charset of random weights; a checkpoint keeps its own")
    if args.weights and not Path(args.weights).is_file():
        parser.error(f"--weights {args.weights}: no such file")
    args.label_lengths = dataset_label_lengths(args.lengths_from) if args.lengths_from else None
    args.precision = choose_precision(args.precision, args.device)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    rates = matmul_rates(args.device, ("32", "bf16", "int8") + (("16",) if args.precision == "16" else ()))
    try:
        results = [run_in_fresh_process(measure, args, "inference", batch) for batch in args.batches]
        if args.train_batch:
            results.append(run_in_fresh_process(measure, args, "training", args.train_batch))
    except RuntimeError as err:
        parser.error(str(err))
    checkpointed = [part for part, on in (("encoder", args.grad_checkpointing),
                                          ("decoder", args.grad_checkpointing_decoder)) if on]
    print(f"{args.weights or args.experiment} on {args.device}, precision {args.precision}"
          f"{', compiled encoder' if args.compile else ''}"
          f"{', checkpointed ' + ' and '.join(checkpointed) if checkpointed else ''}, "
          f"{torch.get_num_threads()} threads")
    print(f"matmul rate ({torch.get_num_threads()} threads): {describe_rates(rates)}; the fractions below are of "
          f"{precision_name(args.precision)}'s")
    for result in results:
        result["matmul_rates"] = rates
        print(report(result, rates[args.precision]))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
