"""Convert ICDAR 2019 MLT (multi-lingual scene text) localisation ground truth to an STR LMDB.

ANNOTATIONS is a folder of per-image files `<image>.txt` or `gt_<image>.txt`, IMAGES the scene images
`<image>.jpg|png|...`.
Each line is one word: `x1,y1,x2,y2,x3,y3,x4,y4,script,transcription`, the corners clockwise from the word's
top-left, the script one of Latin, Arabic, Chinese, Japanese, Korean, Bangla, Hindi, Symbols, Mixed or None, and
the transcription (which may hold commas) `###` for a don't-care region. Words whose script is not in --scripts
and don't-care regions are left out; the others are rectified from their quadrilateral by a perspective
transform. A line that cannot be read or cut is named on stderr (`tr_img_00001.txt:3`) and skipped.
"""
from functools import partial
from typing import List, Optional, Sequence

from strhub.tools.convert.annotations import read_per_image_gt, split_fields
from strhub.tools.convert.core import ImageFinder, Parsed, Word, conversion_errors, converter_parser, label_reason, run

DEFAULT_SCRIPTS = ("Latin", "Symbols")  # what PARSeq kept of MLT19 for its Latin charset


def parse_line(name: str, line: str, scripts: Sequence[str]) -> Parsed:
    """A ground-truth line's word, left out when it is a don't-care region or its script is not in `scripts`."""
    quad, (script, text) = split_fields(line, 8, 2)
    return Word(name, text, polygon=quad), label_reason(text) or (None if script in scripts else f"script {script}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = converter_parser(__doc__, "folder of the per-image ground-truth .txt files",
                              "folder of the scene images")
    parser.add_argument("--scripts", nargs="+", default=list(DEFAULT_SCRIPTS), metavar="SCRIPT",
                        help="scripts to keep (as written in the ground truth)")
    args = parser.parse_args(argv)
    with conversion_errors(parser):
        annotations = read_per_image_gt(args.annotations, partial(parse_line, scripts=args.scripts))
        run(annotations, ImageFinder(args.images), args.output, args.overwrite)


if __name__ == "__main__":
    main()
