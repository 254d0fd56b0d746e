"""fp32, bf16 and int8 side by side on a CPU, in one process: images per second at each batch size (the three
interleaved, round after round, so that a busy machine slows them alike), the image encoder's share of the
machine's measured matmul rate in its precision, and how many strings bf16 and int8 read as fp32 does on LMDB
test sets (with, for CLIP4STR, `int8 image`: the int8 image encoder with the float32 caption graph, and fp32 ONNX,
which checks the export). fp32 and bf16 run the checkpoint in PyTorch (bf16: `Recognizer.cast_for_inference`),
int8 its export with its int8 graphs on ONNX Runtime (`export.py --int8`), whose float32 graphs (fp32 ONNX) are
timed too.

    python export.py CHECKPOINT --out EXPORT --int8
    python scripts/compare_precisions.py CHECKPOINT EXPORT --batches 1 8 32 --agreement ../shared/data/real/test
"""
import argparse
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch

from strhub.app.bench.rates import counted_flops, describe_rates, matmul_rates
from strhub.data.dataset import LmdbDataset, find_lmdbs
from strhub.data.transforms import get_transform
from strhub.deploy.runtime import OnnxReader
from strhub.host import reuse_freed_memory
from strhub.models.checkpoint import load_model

Run = Callable[[torch.Tensor], Tuple[torch.Tensor, float]]  # logits and the encoder's seconds


def torch_run(model: torch.nn.Module) -> Run:
    encode = model.encode

    def run(images: torch.Tensor) -> Tuple[torch.Tensor, float]:
        seconds = []

        def clocked(batch: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            memory = encode(batch)
            seconds.append(time.perf_counter() - start)
            return memory
        model.encode = clocked
        try:
            with torch.inference_mode():
                return model(images).float(), seconds[0]
        finally:
            model.encode = encode
    return run


def onnx_run(reader: OnnxReader) -> Run:
    graph_run = reader.run

    def run(images: torch.Tensor) -> Tuple[torch.Tensor, float]:
        seconds = []

        def clocked(graph: str, feeds: Dict[str, Any]) -> Dict[str, Any]:
            start = time.perf_counter()
            outputs = graph_run(graph, feeds)
            if graph == "encoder":
                seconds.append(time.perf_counter() - start)
            return outputs
        reader.run = clocked
        try:
            return reader(images).float(), seconds[0]
        finally:
            reader.run = graph_run
    return run


def speed(runs: Dict[str, Run], precisions: Dict[str, str], image_size: Tuple[int, int], batches: List[int],
          rounds: int, encoder_flops: Callable[[torch.Tensor], int]) -> None:
    """The speed table. The matmul rates are measured in every round too, after the variants, and the best of each
    is the rate a variant's encoder is compared with: on a busy machine a rate measured once is often far too low."""
    rows = []
    rates: Dict[str, float] = {}
    for batch in batches:
        images = torch.randn(batch, 3, *image_size, generator=torch.Generator().manual_seed(batch)).clamp(-1, 1)
        flops = encoder_flops(images)
        times: Dict[str, List[Tuple[float, float]]] = {name: [] for name in runs}
        for round_ in range(rounds + 1):  # the first round warms up
            for name, run in runs.items():
                start = time.perf_counter()
                _, encoder = run(images)
                if round_:
                    times[name].append((time.perf_counter() - start, encoder))
            rates = {key: max(rates.get(key, 0.0), rate) for key, rate in matmul_rates("cpu", rounds=1).items()}
        base = statistics.median(total for total, _ in times["fp32"])
        for name, measured in times.items():
            total = statistics.median(t for t, _ in measured)
            encoder = statistics.median(e for _, e in measured)
            rows.append((batch, name, batch / total, base / total, encoder, flops / encoder))
    print(f"matmul rate (best of every round): {describe_rates(rates)}")
    print(f"{'batch':>5} {'variant':<9} {'img/s':>8} {'x fp32':>7} {'encoder ms':>11} {'encoder G/s':>11} "
          f"{'% of rate':>9}")
    for batch, name, images_per_second, ratio, encoder, achieved in rows:
        print(f"{batch:>5} {name:<9} {images_per_second:8.2f} {ratio:7.2f} {encoder * 1000:11.1f} "
              f"{achieved / 1e9:11.1f} {100 * achieved / rates[precisions[name]]:8.1f}%")


def agreement(runs: Dict[str, Run], model: Any, root: Path, batch: int, limit: int) -> None:
    """For each LMDB test set (labels filtered as test.py does): how many strings each variant reads as fp32 does,
    of all images and of those that fp32 reads right (where a model reads, not where it guesses between near ties)."""
    transform = get_transform(model.image_size)
    variants = [name for name in runs if name != "fp32"]
    print(f"{'test set':<12} {'images':>6} {'fp32 right':>10} " + " ".join(f"{name + ' = fp32 (of right)':>29}"
                                                                       for name in variants))
    totals = {name: [0, 0] for name in variants}
    total_images = total_right = 0
    for lmdb in find_lmdbs(root):
        dataset = LmdbDataset(lmdb, model.charset_adapter.charset, model.max_label_length, transform=transform)
        count = min(len(dataset), limit) if limit else len(dataset)
        same = {name: [0, 0] for name in variants}
        images = right = 0
        for start in range(0, count, batch):
            items = [item for item in (dataset[i] for i in range(start, min(start + batch, count))) if item]
            strings = {name: model.tokenizer.decode(run(torch.stack([image for image, _ in items]))[0].softmax(-1))[0]
                       for name, run in runs.items()}
            reads_right = [model.charset_adapter(text) == label for text, (_, label) in zip(strings["fp32"], items)]
            images, right = images + len(items), right + sum(reads_right)
            for name in variants:
                agrees = [a == b for a, b in zip(strings[name], strings["fp32"])]
                same[name][0] += sum(agrees)
                same[name][1] += sum(a and r for a, r in zip(agrees, reads_right))
        total_images, total_right = total_images + images, total_right + right
        totals = {name: [total + count for total, count in zip(totals[name], same[name])] for name in variants}
        _agreement_row(lmdb.name, images, right, same)
    _agreement_row("all", total_images, total_right, totals)


def _agreement_row(name: str, images: int, right: int, same: Dict[str, List[int]]) -> None:
    print(f"{name:<12} {images:>6} {right:>10} " + " ".join(
        f"{100 * all_same / max(images, 1):12.2f}% ({100 * right_same / max(right, 1):6.2f}% of {right:>5})"
        for all_same, right_same in same.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("export", type=Path, help="its ONNX export with int8 graphs (export.py --int8)")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=0, help="torch's and ONNX Runtime's threads (0: torch's)")
    parser.add_argument("--agreement", type=Path, help="LMDB test sets to compare the strings on")
    parser.add_argument("--agreement-batch", type=int, default=32)
    parser.add_argument("--limit", type=int, default=0, help="at most this many images per test set (0: all)")
    args = parser.parse_args()
    reuse_freed_memory()
    torch.set_num_threads(args.threads or torch.get_num_threads())
    model = load_model(args.checkpoint).eval()
    bf16 = load_model(args.checkpoint).eval().cast_for_inference(torch.bfloat16)
    int8 = OnnxReader(args.export, device="cpu", threads=torch.get_num_threads())
    float_export = OnnxReader(args.export, device="cpu", threads=torch.get_num_threads(), float_graphs=True)
    runs = {"fp32": torch_run(model), "bf16": torch_run(bf16), "int8 ONNX": onnx_run(int8),
            "fp32 ONNX": onnx_run(float_export)}
    print(f"{args.checkpoint} ({type(model).__name__}), {torch.get_num_threads()} threads")
    if args.batches:
        def encoder_flops(images: torch.Tensor) -> int:
            with torch.inference_mode():
                return counted_flops(lambda: model.encode(images))
        speed(runs, {"fp32": "32", "bf16": "bf16", "int8 ONNX": "int8", "fp32 ONNX": "32"}, model.image_size,
              args.batches, args.rounds, encoder_flops)
    if args.agreement:
        if "caption" in int8.config.get("quantized", {}).get("graphs", {}):
            runs["int8 image"] = onnx_run(OnnxReader(args.export, device="cpu", threads=torch.get_num_threads(),
                                                     float_graphs=["caption"]))
        agreement(runs, model, args.agreement, args.agreement_batch, args.limit)


if __name__ == "__main__":
    main()
