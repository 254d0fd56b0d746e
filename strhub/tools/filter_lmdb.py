"""Copy an STR LMDB without the records that fail the given tests: a label with characters outside a charset,
a label shorter or longer than a length, an image smaller than a size, a record named in a key list.

The input is only read. The output is written in a hidden folder beside its place and moved there when
complete; kept records are renumbered from 1, with their image bytes, label and name (`name-%09d`) unchanged.
Label lengths and the charset test leave whitespace out (the data loader removes it before its own length
limit). The key list holds one record per line, as its index (1-based) or one of its keys (`image-000000012`,
`label-000000012`, `name-000000012`); blank lines and lines starting with # are ignored. With a size test, a
record whose image cannot be read is dropped as unreadable.
"""
import argparse
import io
import re
from collections import Counter
from pathlib import Path
from typing import FrozenSet, Iterator, List, Optional, Tuple

from PIL import Image
from tqdm import tqdm

from strhub.tools.common import HelpFormatter, add_charset_arguments, charset_from_args
from strhub.tools.create_lmdb import count_records, read_records, write_lmdb

_KEY = re.compile(r"^(?:(?:image|label|name)-)?(\d+)$")


def read_key_list(path: Path, total: int) -> FrozenSet[int]:
    """The record indices a key list names (see the module docstring)."""
    indices = set()
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _KEY.match(line)
        if not match or not 1 <= int(match.group(1)) <= total:
            raise ValueError(f"{path}:{number}: {line!r} is not a record index or key of an LMDB of {total} records")
        indices.add(int(match.group(1)))
    return frozenset(indices)


def drop_reason(label: str, image: bytes, charset: Optional[str] = None, min_length: int = 0,
                max_length: Optional[int] = None, min_width: int = 0, min_height: int = 0) -> Optional[str]:
    """Why a record is dropped by the label and size tests, or None to keep it."""
    text = "".join(label.split())
    if charset is not None and not set(text) <= set(charset):
        return "characters outside the charset"
    if len(text) < min_length:
        return "too short"
    if max_length is not None and len(text) > max_length:
        return "too long"
    if min_width or min_height:
        try:
            with Image.open(io.BytesIO(image)) as img:
                width, height = img.size
        except Exception:  # noqa: BLE001 - whatever the decoder raises, the image is unusable
            return "unreadable image"
        if width < min_width or height < min_height:
            return "too small"
    return None


def filter_lmdb(source: Path, output: Path, keys: Optional[Path] = None, overwrite: bool = False,
                **tests) -> Tuple[int, Counter]:
    """Copy `source` to `output` without the records that fail `tests` (the keyword arguments of `drop_reason`)
    or that the key list `keys` names. Returns the record count of `source` and the dropped ones per reason."""
    source, output = Path(source), Path(output)
    if output.resolve() == source.resolve() or source.resolve() in output.resolve().parents \
            or output.resolve() in source.resolve().parents:
        raise ValueError(f"the output {output} must lie outside the input {source} (the input is never modified)")
    total = count_records(source)
    listed = read_key_list(keys, total) if keys else frozenset()
    dropped: Counter = Counter()

    def kept() -> Iterator[Tuple[bytes, str, str]]:
        for index, image, label, name in tqdm(read_records(source), desc=source.name, unit="record", total=total):
            reason = "listed" if index in listed else drop_reason(label, image, **tests)
            if reason:
                dropped[reason] += 1
                continue
            yield (image, label) if name is None else (image, label, name)

    write_lmdb(output, kept(), overwrite)
    return total, dropped


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("input", type=Path, help="LMDB to read")
    parser.add_argument("output", type=Path, help="LMDB directory to create")
    add_charset_arguments(parser, default=None)
    parser.add_argument("--min-length", type=int, default=0, help="drop labels shorter than this")
    parser.add_argument("--max-length", type=int, help="drop labels longer than this")
    parser.add_argument("--min-width", type=int, default=0, help="drop images narrower than this (pixels)")
    parser.add_argument("--min-height", type=int, default=0, help="drop images lower than this (pixels)")
    parser.add_argument("--drop-keys", type=Path, help="file listing records to drop (indices or keys)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing LMDB at the output")
    args = parser.parse_args(argv)
    charset = charset_from_args(args) if args.charset or args.charset_file else None
    try:
        total, dropped = filter_lmdb(args.input, args.output, args.drop_keys, args.overwrite, charset=charset,
                                     min_length=args.min_length, max_length=args.max_length,
                                     min_width=args.min_width, min_height=args.min_height)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as err:
        parser.error(str(err))
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(dropped.items()))
    print(f"kept {total - sum(dropped.values())} of {total} records of {args.input} in {args.output}"
          + (f"; dropped: {reasons}" if reasons else ""))


if __name__ == "__main__":
    main()
