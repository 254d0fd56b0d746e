"""Convert COCO-Text v2.0 (`cocotext.v2.json`) to an STR LMDB.

The annotation file is one JSON object: `imgs` maps an image id to `{id, file_name, width, height, set}` (set
`train` or `val`), `anns` maps an annotation id to `{id, image_id, bbox: [x, y, width, height], mask: [x1, y1,
x2, y2, ...], utf8_string, legibility: legible|illegible, language: english|not english|na, class: machine
printed|handwritten|...}`; the `imgToAnns` index is not needed. IMAGES holds the MS-COCO 2014 training images
(`COCO_train2014_*.jpg`, where both COCO-Text sets come from), found by file name.

Kept: annotations of images in --set that are legible, in one of --languages and of one of --classes (the
defaults follow PARSeq's converter: legible machine-printed English), with a non-empty text. The text is
HTML-unescaped (`&amp;` becomes `&`), as PARSeq's converter does. The word is rectified from its `mask` polygon
(see strhub.tools.convert.core), or cut as its `bbox` when it has no mask. Records that cannot be used are named
on stderr (`<file_name>:<annotation id>`) and skipped.
"""
import html
from functools import partial
from typing import List, Optional, Sequence

from strhub.tools.convert.annotations import read_coco_style, region
from strhub.tools.convert.core import ImageFinder, Parsed, Word, conversion_errors, converter_parser, label_reason, run

SETS = ("train", "val")


def parse_annotation(name: str, ann: dict, languages: Sequence[str], classes: Sequence[str]) -> Parsed:
    """A COCO-Text annotation's word and the reason to leave it out, if any."""
    label = html.unescape(ann.get("utf8_string") or "").strip()
    if ann.get("legibility") != "legible":
        reason = "illegible"
    elif ann.get("language") not in languages:
        reason = f"language {ann.get('language')}"
    elif ann.get("class") not in classes:
        reason = f"class {ann.get('class')}"
    else:
        reason = label_reason(label)
    return Word(name, label, **region(ann, "mask")), reason


def main(argv: Optional[List[str]] = None) -> None:
    parser = converter_parser(__doc__, "cocotext.v2.json", "folder of the MS-COCO train2014 images")
    parser.add_argument("--set", choices=SETS, default="train", help="COCO-Text split to convert")
    parser.add_argument("--languages", nargs="+", default=["english"], help="languages to keep")
    parser.add_argument("--classes", nargs="+", default=["machine printed"], help="text classes to keep")
    args = parser.parse_args(argv)
    with conversion_errors(parser):
        parse = partial(parse_annotation, languages=args.languages, classes=args.classes)
        annotations = read_coco_style(args.annotations, parse,
                                      lambda img: None if img.get("set") == args.set else f"set {img.get('set')}")
        run(annotations, ImageFinder(args.images), args.output, args.overwrite)


if __name__ == "__main__":
    main()
