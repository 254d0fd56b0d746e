"""Build a charset file (one character per line, as `charset=unicode charset_file=...` reads it) from the labels
of STR LMDBs and the characters of text files such as word lists.

Labels are read as the dataset reads them with data.normalize_unicode=false: in NFC, so that every script
is kept as written, and without whitespace unless --keep-whitespace (the space is then a character of the
charset; other whitespace and control characters never are). The characters given with --add come first,
in their order, then the others in code-point order.

    python -m strhub.tools.build_charset data/zh/train data/zh/val --out zh.txt --add 94
"""
import argparse
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable, List, Optional

from strhub.data.dataset import find_lmdbs, lmdb_labels, normalize_label
from strhub.tools.common import CHARSET_PRESETS, HelpFormatter

SHOWN_RARE = 20  # left-out characters named in the report


def count_label_characters(roots: Iterable[Path], keep_whitespace: bool) -> Counter:
    """How often each character occurs in the labels of the LMDBs, in NFC (whitespace removed unless kept)."""
    counts: Counter = Counter()
    for root in roots:
        for label in lmdb_labels(root, progress=True):
            counts.update(normalize_label(label, not keep_whitespace, normalize_unicode=False))
    return counts


def fits_a_line(char: str) -> bool:
    """Whether a charset file can hold the character on a line of its own: the space, or anything but
    whitespace and control characters."""
    return char == " " or not (char.isspace() or unicodedata.category(char) == "Cc")


def charset_characters(counts: Counter, first: str, min_count: int) -> List[str]:
    """`first`, then the characters counted at least `min_count` times in code-point order; whitespace
    other than the space and control characters are left out."""
    fit = [char for char, count in counts.items() if count >= min_count and char not in first and fits_a_line(char)]
    return list(dict.fromkeys(first)) + sorted(fit)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("paths", type=Path, nargs="*", help="LMDB directories or folders holding LMDBs")
    parser.add_argument("--text", type=Path, nargs="+", default=(), metavar="FILE",
                        help="text files (e.g. word lists) whose characters are added, in NFC")
    parser.add_argument("--out", type=Path, required=True, help="charset file to write")
    parser.add_argument("--add", default="", help="characters put first: a preset 36/62/94 or the characters")
    parser.add_argument("--min-count", type=int, default=1, help="leave out characters seen fewer times")
    parser.add_argument("--keep-whitespace", action="store_true", help="keep the space (data.remove_whitespace=false)")
    args = parser.parse_args(argv)
    if not args.paths and not args.text:
        parser.error("give LMDBs, folders of LMDBs or --text files")
    roots = [root for path in args.paths for root in find_lmdbs(path)]
    if args.paths and not roots:
        parser.error(f"no data.mdb found under {', '.join(map(str, args.paths))}")
    for file in args.text:
        if not file.is_file():
            parser.error(f"text file {file} does not exist")
    counts = count_label_characters(roots, args.keep_whitespace)
    for file in args.text:
        counts.update(normalize_label(file.read_text(encoding="utf-8-sig"), True, normalize_unicode=False))
    first = unicodedata.normalize("NFC", CHARSET_PRESETS.get(args.add, args.add))
    chars = charset_characters(counts, first, args.min_count)
    if not chars:
        parser.error("no character found")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(f"{char}\n" for char in chars), encoding="utf-8")
    rare = sorted((char for char, count in counts.items() if count < args.min_count and char not in first
                   and fits_a_line(char)), key=lambda char: -counts[char])
    left_out = f"; {len(rare)} seen fewer than {args.min_count} times left out: {''.join(rare[:SHOWN_RARE])!r}" \
        if rare else ""
    print(f"wrote {len(chars)} characters to {args.out} (from {len(roots)} LMDBs and {len(args.text)} text files"
          f"{left_out})")


if __name__ == "__main__":
    main()
