"""Make an STR LMDB from a folder of images and a label list (`file<TAB>label` per line).

Lines without a tab are split at the first whitespace (the original `create_lmdb_dataset` convention,
so labels may hold spaces but file names may not). Images are stored as their original bytes;
images that do not decode are skipped with a warning naming the file and line.
"""
import argparse
import io
import warnings
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import lmdb
from PIL import Image

from strhub.host import atomic_directory
from strhub.tools.common import HelpFormatter, warnings_to_stderr

MAP_SIZE = 1 << 40  # address space only: data.mdb grows with its content
COMMIT_EVERY = 1000


def write_lmdb(output: Path, records: Iterable[Sequence], overwrite: bool = False) -> int:
    """Write `(image bytes, label)` records as `image-%09d` / `label-%09d` (1-based) plus `num-samples`; a record
    may carry a third item, its name (where it came from), stored under `name-%09d`. Returns the record count.
    The LMDB is written in a hidden directory beside `output` and moved there once complete, so a crash leaves
    nothing under `output`. An existing LMDB at `output` is an error unless `overwrite`."""
    output = Path(output)
    if (output / "data.mdb").exists() and not overwrite:
        raise FileExistsError(f"{output / 'data.mdb'} exists; remove it or pass overwrite")
    count = 0
    with atomic_directory(output, overwrite) as partial:
        path = partial / "data.mdb.partial"  # not yet named data.mdb, so no dataset glob picks it up
        with lmdb.open(str(path), map_size=MAP_SIZE, subdir=False) as env:
            txn = env.begin(write=True)
            for count, (image, label, *name) in enumerate(records, start=1):
                txn.put(f"image-{count:09d}".encode(), image)
                txn.put(f"label-{count:09d}".encode(), label.encode("utf-8"))
                if name:
                    txn.put(f"name-{count:09d}".encode(), name[0].encode("utf-8"))
                if count % COMMIT_EVERY == 0:
                    txn.commit()
                    txn = env.begin(write=True)
            txn.put(b"num-samples", str(count).encode())
            txn.commit()
        path.rename(partial / "data.mdb")
        Path(f"{path}-lock").unlink(missing_ok=True)
    return count


def count_records(root: Path) -> int:
    """The record count (`num-samples`) of the LMDB at `root`."""
    from strhub.data.dataset import read_num_samples, shared_env  # imports Lightning: only when reading

    with shared_env(root).begin() as txn:
        return read_num_samples(txn, root)


def read_records(root: Path) -> Iterator[Tuple[int, bytes, str, Optional[str]]]:
    """`(index, image bytes, label, name or None)` for every record of the LMDB at `root`, in order, read through
    the process's shared read-only environment (py-lmdb opens an LMDB only once per process)."""
    from strhub.data.dataset import shared_env

    total = count_records(root)
    with shared_env(root).begin() as txn:
        for index in range(1, total + 1):
            image, label = txn.get(f"image-{index:09d}".encode()), txn.get(f"label-{index:09d}".encode())
            if image is None or label is None:
                raise KeyError(f"{root}: record {index} lacks its image or label key (num-samples is {total})")
            name = txn.get(f"name-{index:09d}".encode())
            yield index, image, label.decode("utf-8"), None if name is None else name.decode("utf-8")


def read_label_list(path: Path) -> List[Tuple[int, str, str]]:
    """`(line number, file, label)` per non-blank line of a `file<TAB>label` list."""
    entries = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.split("\t", 1) if "\t" in line else line.split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected 'file<TAB>label', got {line!r}")
        entries.append((number, parts[0], parts[1].strip()))
    return entries


def image_problem(data: bytes) -> Optional[str]:
    """Why `data` is not a usable image, or None when it decodes to a non-empty picture."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return None if img.width > 0 and img.height > 0 else "empty image"
    except Exception as err:  # noqa: BLE001 - any decoder failure makes the image unusable
        return f"{type(err).__name__}: {err}"


def folder_records(image_dir: Path, label_list: Path, check: bool = True) -> Iterator[Tuple[bytes, str]]:
    """The `(image bytes, label)` records of a folder and its label list, skipping unusable images."""
    for number, name, label in read_label_list(label_list):
        file = Path(image_dir) / name
        if not file.is_file():
            warnings.warn(f"{label_list}:{number}: image {file} not found; skipped")
            continue
        data = file.read_bytes()
        problem = image_problem(data) if check else None
        if problem:
            warnings.warn(f"{label_list}:{number}: image {file} does not decode ({problem}); skipped")
            continue
        yield data, label


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("image_dir", type=Path, help="folder the file names in the label list are relative to")
    parser.add_argument("labels", type=Path, help="label list, one 'file<TAB>label' per line")
    parser.add_argument("output", type=Path, help="LMDB directory to create")
    parser.add_argument("--no-check", action="store_true", help="store images without test-decoding them")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing LMDB at the output")
    args = parser.parse_args(argv)
    for path, what in ((args.image_dir, "image folder"), (args.labels, "label list")):
        if not path.exists():
            parser.error(f"{what} {path} does not exist")
    total = len(read_label_list(args.labels))
    with warnings_to_stderr():
        count = write_lmdb(args.output, folder_records(args.image_dir, args.labels, not args.no_check),
                           args.overwrite)
    skipped = f" ({total - count} skipped)" if count < total else ""
    print(f"wrote {count} of {total} records to {args.output}{skipped}")


if __name__ == "__main__":
    main()
