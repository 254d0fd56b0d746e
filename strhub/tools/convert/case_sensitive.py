"""Convert the case-sensitive re-annotations of IIIT5k, SVT, SVTP, CUTE80, IC13 and IC15 (Long & Yao, UnrealText;
repository Jyouhou/Case-Sensitive-Scene-Text-Recognition-Datasets) to STR LMDBs.

A set folder holds `IMG/<n>.jpg` (or another image suffix) and `label/<n>.txt`, whose first non-blank line is
the label of image n; the records are stored in numeric order of n, each named `<set>/IMG/<n>.<suffix>` (the
image's path in that repository; `name-%09d`). SOURCE is one set folder, written to OUTPUT, or a folder of set
folders (`iiit5k_test/`, `svt_test/`, ...), each written to OUTPUT/<set>. Images are stored as they are; a label
without its image, or an image that does not decode, is named on stderr and skipped.
"""
import argparse
from pathlib import Path
from typing import List, Optional

from strhub.tools.common import HelpFormatter
from strhub.tools.convert.annotations import read_lines
from strhub.tools.convert.core import (
    IMAGE_SUFFIXES,
    Annotations,
    ImageFinder,
    Source,
    Word,
    add_output_arguments,
    conversion_errors,
    label_reason,
    natural_key,
    run,
)


def read_set(folder: Path) -> Annotations:
    """The records of one set folder, in numeric order of the label files."""
    folder = Path(folder)
    annotations = Annotations()
    for file in sorted((folder / "label").glob("*.txt"), key=natural_key):
        images = [p for p in sorted((folder / "IMG").glob(f"{file.stem}.*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        lines = read_lines(file)
        label = lines[0][1].strip() if lines else ""
        image = images[0].relative_to(folder).as_posix() if images else None
        if image is None:
            annotations.skipped.append((f"{folder.name}/label/{file.name}", f"no image IMG/{file.stem}.*"))
        elif annotations.keep(label_reason(label, dont_care=())):
            annotations.sources.append(Source(image, [Word(f"{folder.name}/{image}", label)]))
    return annotations


def set_folders(source: Path) -> List[Path]:
    """`source` itself when it is a set folder (it has label/), else its subfolders that are."""
    if (Path(source) / "label").is_dir():
        return [Path(source)]
    return sorted(p for p in Path(source).iterdir() if (p / "label").is_dir()) if Path(source).is_dir() else []


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("source", type=Path, help="a set folder (IMG/, label/) or a folder of them")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    sets = set_folders(args.source)
    if not sets:
        parser.error(f"{args.source} is neither a set folder (IMG/, label/) nor a folder of them")
    with conversion_errors(parser):
        for folder in sets:
            output = args.output if folder == args.source else args.output / folder.name
            run(read_set(folder), ImageFinder(folder), output, args.overwrite)


if __name__ == "__main__":
    main()
