"""Convert ICDAR 2013 / ICDAR 2015 (Robust Reading) ground truth to an STR LMDB.

ANNOTATIONS is either a folder of per-image files or a word-image list:

* a folder of `gt_<image>.txt` files (the localisation / end-to-end tasks), IMAGES the scene images
  `<image>.jpg|png`; each line is one word, cut out of its image:
  - ICDAR 2013 focused text: `x1, y1, x2, y2, "word"` (test set) or `x1 y1 x2 y2 "word"` (training set), the
    axis-aligned box from its top-left (x1, y1) to its bottom-right (x2, y2), cut as [x1, x2) x [y1, y2);
  - ICDAR 2015 incidental text: `x1,y1,x2,y2,x3,y3,x4,y4,transcription`, the corners clockwise from the word's
    top-left (the transcription may hold commas), rectified by a perspective transform;
    `###` marks a don't-care region, left out.
* a word-image list `gt.txt` (the cropped word recognition tasks), IMAGES the word images:
  `word_1.png, "word"` per line; the images are stored as they are.

Quoted words lose their quotes (`\\"` inside is a quote). Files may start with a byte-order mark. A line
that cannot be read or cut is named on stderr (`gt_img_1.txt:3`) and skipped.
"""
import re
from pathlib import Path
from typing import List, Optional

from strhub.tools.convert.annotations import read_lines, read_per_image_gt, split_fields
from strhub.tools.convert.core import (
    Annotations,
    ImageFinder,
    Parsed,
    Source,
    Word,
    conversion_errors,
    converter_parser,
    label_reason,
    run,
)

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_BOX = re.compile(r"^\s*" + r"\s*[,\s]\s*".join([_NUMBER] * 4) + r'\s*[,\s]\s*(".*")\s*$')


def unquote(text: str) -> str:
    """`"word"` → `word`, with `\\"` and `\\\\` inside unescaped; other text is returned as it is."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r'\\(["\\])', r"\1", text[1:-1])
    return text


def parse_scene_line(name: str, line: str) -> Parsed:
    """An ICDAR 2015 quadrilateral line, else an ICDAR 2013 box line (see the module docstring), and the reason
    to leave the word out, if any."""
    try:
        quad, (text,) = split_fields(line, 8, 1)
        return Word(name, text, polygon=quad), label_reason(text)
    except ValueError:
        pass
    match = _BOX.match(line)
    if not match:
        raise ValueError("neither `x1,y1,...,x4,y4,transcription` (ICDAR 2015) nor `x1, y1, x2, y2, \"word\"` "
                         "(ICDAR 2013)")
    x0, y0, x1, y1 = (float(v) for v in match.groups()[:4])
    label = unquote(match.group(5))
    return Word(name, label, box=(x0, y0, x1, y1)), label_reason(label)


def read_word_list(path: Path) -> Annotations:
    """The word images of a recognition-task `gt.txt`, each named by its image file."""
    annotations = Annotations()
    for number, line in read_lines(path):
        image, comma, text = line.partition(",")
        label: Optional[str] = unquote(text) if comma else None
        if label is None:
            annotations.skipped.append((f"{Path(path).name}:{number}", f"expected `image, \"word\"`: {line!r}"))
        elif annotations.keep(label_reason(label)):
            annotations.sources.append(Source(image.strip(), [Word(image.strip(), label)]))
    return annotations


def main(argv: Optional[List[str]] = None) -> None:
    parser = converter_parser(__doc__, "a folder of gt_<image>.txt files, or a word-image list gt.txt",
                              "folder of the scene images (the word images for a gt.txt)")
    args = parser.parse_args(argv)
    with conversion_errors(parser):
        gt = args.annotations
        annotations = read_per_image_gt(gt, parse_scene_line) if gt.is_dir() else read_word_list(gt)
        run(annotations, ImageFinder(args.images), args.output, args.overwrite)


if __name__ == "__main__":
    main()
