"""Convert Union14M-L's training lists and the Union14M-Benchmark to STR LMDBs.

Union14M-L ships word crops already, so images are stored as they are; only the lists differ. ANNOTATIONS is:

* a list file, in one of three formats (told apart by the suffix):
  - `.json` (the `mmocr1.0` annotations, e.g. `train_annos/mmocr1.0/train_easy.json`): an object whose
    `data_list` holds `{img_path, instances: [{text}]}` per image;
  - `.jsonl` (the `mmocr-0.x` annotations): one object `{filename, text}` per line;
  - `.txt`: `image<TAB>label` per line (or the image, a space and the label), as strhub-create-lmdb reads;
  written to OUTPUT. Image paths are taken below --images, by default the first of the list's folder and its
  parents below which the first listed image exists (Union14M-L's root for its `train_annos` lists).
* a folder of subsets `<subset>/annotation.json` (the `Union14M-Benchmarks` folder: curve, multi_oriented,
  artistic, contextless, salient, multi_words, general, ...), each written to OUTPUT/<subset>; image paths are
  taken below --images (default: that folder), or else below the subset's folder.

Records whose label is empty are left out; those that cannot be used are named on stderr (by image path) and
skipped.
"""
import argparse
import json
from pathlib import Path
from typing import List, Optional, Tuple

from strhub.tools.common import HelpFormatter
from strhub.tools.convert.annotations import load_json, read_lines
from strhub.tools.convert.core import (
    Annotations,
    ImageFinder,
    Source,
    Word,
    add_output_arguments,
    conversion_errors,
    label_reason,
    run,
)
from strhub.tools.create_lmdb import read_label_list

BENCHMARK_FILE = "annotation.json"


def list_entries(path: Path) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
    """`(image path, label)` per entry of a list file (see the module docstring), and the unreadable entries as
    `(where, why)`."""
    path = Path(path)
    entries: List[Tuple[str, str]] = []
    bad: List[Tuple[str, str]] = []
    if path.suffix == ".json":
        data = load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("data_list"), list):
            raise ValueError(f"{path}: expected an mmocr 1.0 annotation object with a list 'data_list'")
        for number, item in enumerate(data["data_list"]):
            try:
                texts = [instance["text"] for instance in item["instances"]]
                if len(texts) != 1:
                    raise ValueError(f"{len(texts)} instances, expected one")
                entries.append((item["img_path"], texts[0]))
            except (KeyError, TypeError, ValueError) as err:
                bad.append((f"{path.name}:data_list[{number}]", f"unreadable entry ({type(err).__name__}: {err})"))
    elif path.suffix == ".jsonl":
        for number, line in read_lines(path):
            try:
                item = json.loads(line)
                entries.append((item["filename"], item["text"]))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                bad.append((f"{path.name}:{number}", f"unreadable line ({type(err).__name__}: {err})"))
    elif path.suffix == ".txt":
        entries = [(image, label) for _, image, label in read_label_list(path)]
    else:
        raise ValueError(f"{path}: unknown list format (expected .json, .jsonl or .txt)")
    return entries, bad


def read_list(path: Path) -> Annotations:
    """The records of a list file, each named by its image path."""
    entries, bad = list_entries(path)
    annotations = Annotations(skipped=bad)
    for image, label in entries:
        if annotations.keep(label_reason(label.strip(), dont_care=())):
            annotations.sources.append(Source(image, [Word(image, label.strip())]))
    return annotations


def default_root(path: Path, first_image: Optional[str]) -> Path:
    """The first of the list's folder and its parents below which `first_image` exists (else the list's folder)."""
    for folder in [path.parent, *path.parent.parents]:
        if first_image and (folder / first_image).is_file():
            return folder
    return path.parent


def benchmark_subsets(folder: Path) -> List[Path]:
    """The subset folders `<subset>/annotation.json` of a Union14M-Benchmarks folder, sorted."""
    return sorted(file.parent for file in Path(folder).glob(f"*/{BENCHMARK_FILE}"))


def convert_all(annotations: Path, output: Path, images: Optional[Path] = None, overwrite: bool = False) -> None:
    """Convert a list file to `output`, or every subset of a benchmark folder to `output/<subset>`."""
    annotations = Path(annotations)
    if annotations.is_dir():
        subsets = benchmark_subsets(annotations)
        if not subsets:
            raise FileNotFoundError(f"no <subset>/{BENCHMARK_FILE} in {annotations}")
        for subset in subsets:
            run(read_list(subset / BENCHMARK_FILE), ImageFinder(images or annotations, subset),
                Path(output) / subset.name, overwrite)
        return
    records = read_list(annotations)
    root = images or default_root(annotations, records.sources[0].image if records.sources else None)
    run(records, ImageFinder(root), Path(output), overwrite)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("annotations", type=Path,
                        help="a list file (.json, .jsonl, .txt), or a Union14M-Benchmarks folder of subsets")
    add_output_arguments(parser)
    parser.add_argument("--images", type=Path, help="folder the image paths are relative to (see above)")
    args = parser.parse_args(argv)
    with conversion_errors(parser):
        convert_all(args.annotations, args.output, args.images, args.overwrite)


if __name__ == "__main__":
    main()
