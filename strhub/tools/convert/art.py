"""Convert ICDAR 2019 ArT (arbitrary-shaped text, `train_labels.json`) to an STR LMDB.

The annotation file is one JSON object mapping an image key (`gt_0`) to the list of its text regions, each
`{points: [[x1, y1], [x2, y2], ...], transcription, language: Latin|Chinese|Mixed|None, illegibility: bool}`;
the points run clockwise from the text's top-left, four of them for a quadrilateral, more for curved text.
IMAGES holds the images `<key>.jpg` (`train_images/`), found by stem.

Kept: legible regions in one of --languages (default Latin, the script of a Latin charset) whose transcription
is neither empty nor `###`. A quadrilateral is rectified from its corners, a longer polygon from its
minimum-area rectangle (see strhub.tools.convert.core). Records that cannot be used are named on stderr
(`<key>:<n>`, n counting from 1) and skipped.
"""
from pathlib import Path
from typing import List, Optional, Sequence

from strhub.tools.convert.annotations import load_json, points
from strhub.tools.convert.core import (
    Annotations,
    ImageFinder,
    Source,
    Word,
    conversion_errors,
    converter_parser,
    label_reason,
    run,
)

DEFAULT_LANGUAGES = ("Latin",)


def read_labels(path: Path, languages: Optional[Sequence[str]] = DEFAULT_LANGUAGES) -> Annotations:
    """The words of an ArT-style label file (image key → regions), by image; `languages` None keeps every
    language (LSVT's regions have none)."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping image keys to lists of regions")
    annotations = Annotations()
    for key, regions in data.items():
        words: List[Word] = []
        for number, item in enumerate(regions if isinstance(regions, list) else [regions], start=1):
            name = f"{key}:{number}"
            try:
                label, polygon = item["transcription"].strip(), points(item["points"])
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                annotations.skipped.append((name, f"unreadable region ({type(err).__name__}: {err})"))
                continue
            if item.get("illegibility"):
                reason = "illegible"
            elif languages is not None and item.get("language") not in languages:
                reason = f"language {item.get('language')}"
            else:
                reason = label_reason(label)
            if annotations.keep(reason):
                words.append(Word(name, label, polygon=polygon))
        if words:
            annotations.sources.append(Source(key, words))
    return annotations


def main(argv: Optional[List[str]] = None) -> None:
    parser = converter_parser(__doc__, "train_labels.json", "folder of the images <key>.jpg")
    parser.add_argument("--languages", nargs="+", default=list(DEFAULT_LANGUAGES), help="languages to keep")
    args = parser.parse_args(argv)
    with conversion_errors(parser):
        run(read_labels(args.annotations, args.languages), ImageFinder(args.images), args.output, args.overwrite)


if __name__ == "__main__":
    main()
