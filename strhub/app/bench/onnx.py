"""Inference time of PyTorch eager against ONNX Runtime on the same weights (CLIP4STR-B/16 with random weights by
default, or any experiment or checkpoint), in one process on the same inputs, after the export has been checked
against PyTorch. The two backends run alternately, several repeats each, so that a shared machine slows both
alike; the medians and their ratio are printed. Both use `--threads` intra-op threads.

    python bench.py onnx                                  # vl4str (B/16), batches 1 and 8, CPU, float32
    python bench.py onnx --experiment parseq --batches 1 32 --repeats 9
    python bench.py onnx --weights some_checkpoint.pt --export-dir exports/base

Inputs are those of `bench.py speed`: `randn(B, 3, H, W)` clamped to [-1, 1], generator seed + B.
"""
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import onnxruntime
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from strhub.app.bench.speed import build_plain
from strhub.app.common import Parser, count
from strhub.config import CONFIG_DIR
from strhub.deploy import OnnxReader
from strhub.deploy.export import check_export, export_onnx
from strhub.host import reuse_freed_memory, timed


def interleaved(runs: Dict[str, Callable[[], object]], warmup: int, repeats: int,
                progress: tqdm) -> Dict[str, List[float]]:
    """Seconds of each run per repeat, the runs taken in turn (their order reversed every other repeat)."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: Dict[str, List[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            times[name] += timed(runs[name], "cpu", warmup=0, repeats=1)
        progress.update(1)
    return times


def main(argv: Optional[List[str]] = None) -> None:
    parser = Parser(__doc__, prog="bench.py onnx")
    parser.add_argument("--experiment", default="vl4str", help="experiment config (random weights)")
    parser.add_argument("--weights", help="checkpoint to load instead of random weights")
    parser.add_argument("--batches", type=count(1), nargs="+", default=[1, 8])
    parser.add_argument("--warmup", type=count(0), default=2)
    parser.add_argument("--repeats", type=count(1), default=7)
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs (images: seed + batch)")
    parser.add_argument("--threads", type=count(0), default=0, help="intra-op threads of both (0: PyTorch's default)")
    parser.add_argument("--export-dir", type=Path, help="where to write the export (default: a temporary folder)")
    args = parser.parse_args(argv)
    args.compile, args.charset_file = False, None  # what build_plain reads (the weights keep their charset)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    reuse_freed_memory()
    defaults = OmegaConf.load(CONFIG_DIR / "export.yaml")
    model = build_plain(args).eval()
    with tempfile.TemporaryDirectory() as temporary:
        out = args.export_dir or Path(temporary)
        start = time.perf_counter()
        export_onnx(model, out, defaults.opset, defaults.atol)
        checks = check_export(model, out, defaults.check_batches, defaults.check_seed, defaults.atol)
        print(f"exported and checked in {time.perf_counter() - start:.0f} s: "
              + ", ".join(f"batch {c.batch} logits within {c.max_difference:.2g}" for c in checks))
        reader = OnnxReader(out, device="cpu", threads=threads)
        height, width = model.image_size
        results = []
        with tqdm(total=len(args.batches) * args.repeats, desc="timing", unit="repeat", disable=None) as progress:
            for batch in args.batches:
                generator = torch.Generator().manual_seed(args.seed + batch)
                images = torch.randn(batch, 3, height, width, generator=generator).clamp(-1, 1)
                with torch.inference_mode():
                    difference = float((reader(images) - model(images)).abs().max())
                    times = interleaved({"pytorch": lambda: model(images), "onnxruntime": lambda: reader(images)},
                                        args.warmup, args.repeats, progress)
                results.append((batch, difference, {name: statistics.median(t) for name, t in times.items()}))
    print(f"{args.weights or args.experiment}: PyTorch {torch.__version__} eager vs ONNX Runtime "
          f"{onnxruntime.__version__} (CPU), float32, {threads} threads, median of {args.repeats} interleaved "
          f"repeats")
    for batch, difference, medians in results:
        ratio = medians["pytorch"] / medians["onnxruntime"]
        print(f"batch {batch:>3}: PyTorch {medians['pytorch'] * 1000:8.1f} ms | ONNX Runtime "
              f"{medians['onnxruntime'] * 1000:8.1f} ms | PyTorch / ONNX Runtime {ratio:5.2f} "
              f"| logits within {difference:.2g}")


if __name__ == "__main__":
    main()
