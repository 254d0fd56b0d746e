"""Reading the annotation formats the converters meet: text files of lines (ICDAR's per-image ground truth) and
COCO-style JSON (COCO-Text, TextOCR, ArT, Union14M), into `Annotations` of word records."""
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from strhub.tools.convert.core import Annotations, Parsed, Source, Word, natural_key


def read_lines(path: Path) -> List[Tuple[int, str]]:
    """`(line number, line)` of the non-blank lines of a UTF-8 text file (a byte-order mark is dropped)."""
    text = Path(path).read_text(encoding="utf-8-sig")
    return [(number, line.rstrip("\r\n")) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def split_fields(line: str, coordinates: int, texts: int) -> Tuple[np.ndarray, List[str]]:
    """A line of `coordinates` comma-separated numbers, then `texts` comma-separated fields of which the last may
    itself hold commas: the points (coordinates / 2, 2) and the stripped fields."""
    parts = line.split(",", coordinates + texts - 1)
    if len(parts) < coordinates + texts:
        raise ValueError(f"expected {coordinates} comma-separated coordinates and {texts} more fields")
    try:
        numbers = np.array([float(part) for part in parts[:coordinates]])
    except ValueError:
        raise ValueError(f"the first {coordinates} fields are not all numbers") from None
    return numbers.reshape(-1, 2), [part.strip() for part in parts[coordinates:]]


def read_per_image_gt(folder: Path, parse: Callable[[str, str], Parsed]) -> Annotations:
    """The words of every per-image annotation file `gt_<stem>.txt` or `<stem>.txt` of a folder (in natural
    order; the image is the one with that stem), by image. `parse(name, line)` gives a line's word and the reason
    to leave it out (or None), and raises ValueError for a line it cannot read; such a line is skipped."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"annotation folder {folder} does not exist")
    files = sorted(Path(folder).glob("*.txt"), key=natural_key)
    if not files:
        raise FileNotFoundError(f"no .txt annotation file in {folder}")
    annotations = Annotations()
    for file in files:
        words: List[Word] = []
        for number, line in read_lines(file):
            name = f"{file.name}:{number}"
            try:
                word, reason = parse(name, line)
            except ValueError as err:
                annotations.skipped.append((name, f"{err}: {line!r}"))
                continue
            if annotations.keep(reason):
                words.append(word)
        if words:
            annotations.sources.append(Source(file.stem[3:] if file.stem.startswith("gt_") else file.stem, words))
    return annotations


def load_json(path: Path) -> Any:
    """A JSON file's content, with errors that name the file."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def read_coco_style(path: Path, parse: Callable[[str, dict], Parsed],
                    image_reason: Callable[[dict], Optional[str]] = lambda img: None) -> Annotations:
    """The words of a COCO-style annotation file (`imgs` and `anns` keyed by id, each annotation naming its
    `image_id`), by image in the order of `imgs`; an index of annotations by image is not needed. `parse(name,
    ann)` gives a word and the reason to leave it out (or None); an annotation it cannot read (a missing key, a
    malformed value) is skipped. The annotations of an image with an `image_reason` are left out for it."""
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("imgs"), dict) or not isinstance(data.get("anns"), dict):
        raise ValueError(f"{path}: expected a JSON object with the objects 'imgs' and 'anns' keyed by id")
    annotations = Annotations()
    by_image: Dict[str, List[Tuple[str, dict]]] = {}
    for ann_id, ann in data["anns"].items():
        if not isinstance(ann, dict) or "image_id" not in ann:
            annotations.skipped.append((f"{path.name}:anns[{ann_id}]", "no image_id"))
            continue
        by_image.setdefault(str(ann["image_id"]), []).append((ann_id, ann))
    for img_id, img in data["imgs"].items():
        anns = by_image.pop(str(img_id), [])
        file_name = img.get("file_name") if isinstance(img, dict) else None
        if not file_name:
            annotations.skipped += [(f"{path.name}:anns[{ann_id}]", f"image {img_id} has no file_name")
                                    for ann_id, _ in anns]
            continue
        reason = image_reason(img)
        if reason:
            annotations.filtered[reason] += len(anns)
            continue
        words: List[Word] = []
        for ann_id, ann in anns:
            name = f"{file_name}:{ann_id}"
            try:
                word, reason = parse(name, ann)
            except (KeyError, TypeError, ValueError) as err:
                annotations.skipped.append((name, f"unreadable annotation ({type(err).__name__}: {err})"))
                continue
            if annotations.keep(reason):
                words.append(word)
        if words:
            annotations.sources.append(Source(file_name, words))
    for img_id, anns in by_image.items():
        annotations.skipped += [(f"{path.name}:anns[{ann_id}]", f"image {img_id} is not in imgs") for ann_id, _ in anns]
    return annotations


def region(ann: dict, polygon_key: str) -> Dict[str, Any]:
    """`Word` keyword arguments for a COCO-style annotation: its polygon when it has at least three points, else
    its `bbox` (x, y, width, height) as a box."""
    values = ann.get(polygon_key) or []
    if len(values) >= 6:
        return {"polygon": points(values)}
    x, y, width, height = (float(v) for v in ann["bbox"])
    return {"box": (x, y, x + width, y + height)}


def points(values: Sequence) -> np.ndarray:
    """A polygon from `[x1, y1, x2, y2, ...]` or `[[x1, y1], ...]`."""
    return np.asarray(values, dtype=np.float64).reshape(-1, 2)
