"""Convert ICDAR 2019 LSVT (large-scale street view text, `train_full_labels.json`) to an STR LMDB.

The annotation file has ArT's shape: one JSON object mapping an image key (`gt_0`) to the list of its text
regions, each `{points: [[x1, y1], ...], transcription, illegibility: bool}` (no language). IMAGES holds the
images `<key>.jpg`, searched for by stem in all its subfolders (`train_full_images_0/`, `train_full_images_1/`).

Kept: legible regions whose transcription is neither empty nor `###`, rectified as ArT's (see
strhub.tools.convert.core). Most LSVT text is Chinese: for a Latin charset, follow with
`strhub-filter-lmdb --charset 94`. Records that cannot be used are named on stderr (`<key>:<n>`) and skipped.
"""
from typing import List, Optional

from strhub.tools.convert.art import read_labels
from strhub.tools.convert.core import ImageFinder, conversion_errors, converter_parser, run


def main(argv: Optional[List[str]] = None) -> None:
    parser = converter_parser(__doc__, "train_full_labels.json", "folder holding the images <key>.jpg, at any depth")
    args = parser.parse_args(argv)
    with conversion_errors(parser):
        run(read_labels(args.annotations, languages=None), ImageFinder(args.images), args.output, args.overwrite)


if __name__ == "__main__":
    main()
