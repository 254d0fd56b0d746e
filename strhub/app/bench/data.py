"""Data-loading throughput: images/second of the training loader (RandAugment, resize, normalisation)
per number of DataLoader workers. Reads the LMDBs under --data, or renders a synthetic set first.

    python bench.py data --data ../shared/data/real/train --workers 1 2
"""
import resource
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from strhub.app.common import Parser, count
from strhub.data.dataset import build_tree_dataset, skip_corrupt_collate
from strhub.data.transforms import OPENAI_MEAN, OPENAI_STD, get_transform
from strhub.tokenizer import CHARSET_94
from strhub.tools.render_words import WordRenderer, generate
from strhub.tools.typefaces import find_fonts


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def throughput(dataset: Dataset, workers: int, batch_size: int, epochs: int) -> Tuple[float, float]:
    """Images per wall-clock second after the first batch (which absorbs the worker start-up), and images
    per CPU second of all processes, start-up included: about what one free core delivers."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        collate_fn=skip_corrupt_collate)
    images, timed, cpu_start, start = 0, 0, cpu_seconds(), None
    for _ in range(epochs):
        for _, labels in loader:  # each epoch's workers exit at its end, so their CPU time gets counted
            images += len(labels)
            if start is None:
                start = time.perf_counter()
            else:
                timed += len(labels)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    return timed / wall, images / cpu


def main(argv: Optional[List[str]] = None) -> None:
    parser = Parser(__doc__, prog="bench.py data")
    parser.add_argument("--data", type=Path, help="LMDB or folder of LMDBs (default: render --images synthetic ones)")
    parser.add_argument("--images", type=count(1), default=2000,
                        help="synthetic images to render when --data is absent")
    parser.add_argument("--workers", type=count(0), nargs="+", default=[1, 2], help="worker counts to time")
    parser.add_argument("--batch-size", type=count(1), default=64)
    parser.add_argument("--img-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("--epochs", type=count(1), default=1, help="passes over the data per worker count")
    parser.add_argument("--no-augment", action="store_true", help="time without RandAugment")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            renderer = WordRenderer(CHARSET_94, find_fonts(), [], 32, 0, 1, 12, (20, 44), "jpeg", seed=0)
            data = generate(Path(tmp), {"train": args.images}, renderer)["train"]
        transform = get_transform(args.img_size, not args.no_augment, mean=OPENAI_MEAN, std=OPENAI_STD)
        dataset = build_tree_dataset(data, CHARSET_94, 25, transform=transform)
        print(f"{len(dataset)} images from {data}, {args.img_size[0]}x{args.img_size[1]}, "
              f"augment={not args.no_augment}, batch {args.batch_size}")
        for workers in args.workers:
            rate, per_cpu = throughput(dataset, workers, args.batch_size, args.epochs)
            print(f"workers {workers}: {rate:7.1f} images/s, {rate / max(workers, 1):7.1f} images/s per worker, "
                  f"{per_cpu:7.1f} images per CPU second")


if __name__ == "__main__":
    main()
