"""Convert TextOCR (`TextOCR_0.1_train.json`, `TextOCR_0.1_val.json`) to an STR LMDB.

The annotation file is one JSON object: `imgs` maps an image id to `{id, file_name: train/<id>.jpg, width,
height, set}`, `anns` maps an annotation id (`<image id>_<n>`) to `{id, image_id, bbox: [x, y, width, height],
points: [x1, y1, x2, y2, ...], utf8_string}`, where the text `.` marks an illegible word (left out); the
`imgToAnns` index is not needed. IMAGES holds the Open Images training images TextOCR annotates
(`train_val_images/train_images/<id>.jpg`), found by the path in `file_name` or by its file name.

Each word is rectified from its `points` polygon (see strhub.tools.convert.core), or cut as its `bbox` when it
has fewer than three points. Records that cannot be used are named on stderr (`<file_name>:<annotation id>`)
and skipped.
"""
from typing import List, Optional

from strhub.tools.convert.annotations import read_coco_style, region
from strhub.tools.convert.core import ImageFinder, Parsed, Word, conversion_errors, converter_parser, label_reason, run

ILLEGIBLE = "."


def parse_annotation(name: str, ann: dict) -> Parsed:
    """A TextOCR annotation's word and the reason to leave it out, if any."""
    label = ann["utf8_string"].strip()
    return Word(name, label, **region(ann, "points")), "illegible" if label == ILLEGIBLE else label_reason(label)


def main(argv: Optional[List[str]] = None) -> None:
    parser = converter_parser(__doc__, "TextOCR_0.1_train.json or TextOCR_0.1_val.json",
                              "folder of the TextOCR (Open Images) images")
    args = parser.parse_args(argv)
    with conversion_errors(parser):
        run(read_coco_style(args.annotations, parse_annotation), ImageFinder(args.images), args.output,
            args.overwrite)


if __name__ == "__main__":
    main()
