"""Inspect STR LMDBs: record count, label length histogram, sample labels, charset coverage, what the
dataset filter keeps, image sizes and unreadable records. A path may be one LMDB or a folder of them."""
import argparse
import io
import random
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from PIL import Image

from strhub.data.dataset import LmdbDataset, find_lmdbs, normalize_label, read_label, shared_env
from strhub.tokenizer import CharsetAdapter
from strhub.tools.common import HelpFormatter, add_charset_arguments, charset_from_args, warnings_to_stderr
from strhub.tools.create_lmdb import image_problem

BAR_WIDTH = 40


def inspect(root: Path, charset: str, max_label_length: int, remove_whitespace: bool = True,
            normalize_unicode: bool = True, num_samples: int = 10, check_images: bool = True,
            seed: int = 0) -> Dict:
    """Statistics of one LMDB (see the module docstring), as a dict."""
    lengths: Counter = Counter()
    outside: Counter = Counter()
    covered = 0
    labels: List[str] = []
    unreadable: List[int] = []
    sizes: List[Tuple[int, int]] = []
    adapter = CharsetAdapter(charset)
    kept = LmdbDataset(root, charset, max_label_length, remove_whitespace=remove_whitespace,
                       normalize_unicode=normalize_unicode)  # also checks the LMDB's structure
    total = kept.total
    with shared_env(root).begin() as txn:
        for index in range(1, total + 1):
            raw = read_label(txn, root, index, total)
            label = normalize_label(raw, remove_whitespace, normalize_unicode)
            labels.append(label)
            lengths[len(label)] += 1
            missing = adapter.outside(label)
            outside.update(missing)
            covered += not missing
            if check_images:
                data = txn.get(f"image-{index:09d}".encode())
                if data is None or image_problem(data):
                    unreadable.append(index)
                else:
                    sizes.append(Image.open(io.BytesIO(data)).size)
    picks = sorted(random.Random(seed).sample(range(total), min(num_samples, total)))
    return {"root": str(root), "total": total, "lengths": lengths, "covered": covered, "outside": outside,
            "kept": len(kept), "filtered": dict(kept.filtered), "samples": [(i + 1, labels[i]) for i in picks],
            "unreadable": unreadable if check_images else None, "sizes": sizes}


def report(stats: Dict, max_label_length: int) -> str:
    """Human-readable text of `inspect`'s statistics."""
    total = stats["total"]
    lines = [f"== {stats['root']}", f"records: {total}", "label length (after whitespace/Unicode normalisation):"]
    peak = max(stats["lengths"].values(), default=1)
    for length in sorted(stats["lengths"]):
        count = stats["lengths"][length]
        mark = "  (over max_label_length)" if length > max_label_length else ""
        lines.append(f"  {length:3d} {count:8d} {'#' * max(1, round(BAR_WIDTH * count / peak))}{mark}")
    share = 100 * stats["covered"] / total if total else 0.0
    lines.append(f"labels fully inside the charset (after its case folding): {stats['covered']} ({share:.2f} %)")
    if stats["outside"]:
        common = ", ".join(f"{char!r}: {count}" for char, count in stats["outside"].most_common(20))
        lines.append(f"characters outside the charset ({len(stats['outside'])} distinct): {common}")
    filtered = ", ".join(f"{reason.replace('_', ' ')}: {count}" for reason, count in stats["filtered"].items())
    lines.append(f"kept by the dataset filter: {stats['kept']} of {total}" + (f" ({filtered})" if filtered else ""))
    if stats["sizes"]:
        widths, heights = sorted(w for w, _ in stats["sizes"]), sorted(h for _, h in stats["sizes"])
        middle = len(widths) // 2
        lines.append(f"image width min/median/max: {widths[0]}/{widths[middle]}/{widths[-1]}, "
                     f"height: {heights[0]}/{heights[middle]}/{heights[-1]}")
    if stats["unreadable"] is not None:
        shown = ", ".join(str(i) for i in stats["unreadable"][:20])
        lines.append(f"unreadable images: {len(stats['unreadable'])}" + (f" (records {shown})" if shown else ""))
    lines.append("sample labels:")
    lines += [f"  {index:9d}  {label!r}" for index, label in stats["samples"]]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("paths", type=Path, nargs="+", help="LMDB directories or folders holding LMDBs")
    add_charset_arguments(parser, default="94")
    parser.add_argument("--max-label-length", type=int, default=25, help="longer labels are dropped by the filter")
    parser.add_argument("--keep-whitespace", action="store_true", help="do not remove whitespace from labels")
    parser.add_argument("--keep-unicode", action="store_true",
                        help="keep non-ASCII labels (NFC) instead of folding them to ASCII (NFKD)")
    parser.add_argument("--samples", type=int, default=10, help="number of random labels to show")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample choice")
    parser.add_argument("--no-images", action="store_true", help="skip decoding the images (faster)")
    args = parser.parse_args(argv)
    charset = charset_from_args(args)
    roots = [root for path in args.paths for root in find_lmdbs(path)]
    if not roots:
        parser.error(f"no data.mdb found under {', '.join(map(str, args.paths))}")
    with warnings_to_stderr():
        for root in roots:
            stats = inspect(root, charset, args.max_label_length, not args.keep_whitespace, not args.keep_unicode,
                            args.samples, not args.no_images, args.seed)
            print(report(stats, args.max_label_length), end="\n\n")


if __name__ == "__main__":
    main()
