"""What the converters share: word records (an image, a region, a label), finding the images, cutting and
rectifying the words, the LMDB write with a progress bar, and the report of what was left out.

Regions: an axis-aligned box is cut as it is (clipped to the image); a polygon is rectified, by a perspective
transform, from the quadrilateral `strhub.tools.geometry.word_quad` gives (its own four corners, or the
minimum-area rectangle of a longer polygon). A crop is stored as JPEG with the source image's quantisation
tables when the source is a JPEG, otherwise as PNG; a whole-image record keeps its original bytes. Every
record is stored with its name (`<annotation file>:<line>` or `<image>:<annotation id>`) under `name-%09d`.
"""
import argparse
import contextlib
import io
import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from strhub.data.transforms import to_rgb
from strhub.tools.common import HelpFormatter, warnings_to_stderr
from strhub.tools.create_lmdb import write_lmdb
from strhub.tools.geometry import perspective_coefficients, word_quad

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff")
ABORT_AFTER_MISSING = 50  # when none of the first this many images is found, the image folder is the wrong one


class CropError(ValueError):
    """A word region that cannot be cut out of its image."""


class Word(NamedTuple):
    """A labelled word: the whole image when it has neither a `box` (x0, y0, x1, y1) nor a `polygon` (N, 2)."""

    name: str
    label: str
    box: Optional[Tuple[float, float, float, float]] = None
    polygon: Optional[np.ndarray] = None


class Source(NamedTuple):
    """An image, named as the annotations name it (a path below an image root, a file name or a stem), and the
    words to take from it."""

    image: str
    words: List[Word]


Parsed = Tuple[Word, Optional[str]]  # a word, and the reason to leave it out (None: keep it)


@dataclass
class Annotations:
    """What a converter reads: the sources in order, the records left out on purpose (count per reason) and the
    records that could not be read (name, why)."""

    sources: List[Source] = field(default_factory=list)
    filtered: Counter = field(default_factory=Counter)
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def keep(self, reason: Optional[str]) -> bool:
        """False, counting the record as filtered, when there is a `reason` to leave it out; else True."""
        if reason:
            self.filtered[reason] += 1
        return not reason


def label_reason(label: str, dont_care: Sequence[str] = ("###",)) -> Optional[str]:
    """Why a transcription is left out (a don't-care mark or nothing), or None."""
    if label in dont_care:
        return "don't care"
    return None if label.strip() else "empty label"


class ImageFinder:
    """Finds the image an annotation names: the path as given below each root in turn, else the only image below
    the first root with that file name (or, for a name without an image suffix, with that stem)."""

    def __init__(self, *roots: Path) -> None:
        self.roots = [Path(root) for root in roots]
        for root in self.roots:
            if not root.is_dir():
                raise FileNotFoundError(f"image folder {root} does not exist")
        self._index: Optional[Dict[str, List[Path]]] = None

    def _build_index(self) -> Dict[str, List[Path]]:
        index: Dict[str, List[Path]] = {}
        for path in sorted(self.roots[0].rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                index.setdefault(path.name, []).append(path)
                index.setdefault(path.stem, []).append(path)
        return index

    def find(self, name: str) -> Path:
        for root in self.roots:
            if (root / name).is_file():
                return root / name
        if self._index is None:
            self._index = self._build_index()
        matches = self._index.get(Path(name).name, [])
        if not matches:
            raise FileNotFoundError(f"image {name} not found under {self.roots[0]}")
        if len(matches) > 1:
            raise FileNotFoundError(f"image {name} is ambiguous under {self.roots[0]}: "
                                    + ", ".join(str(m.relative_to(self.roots[0])) for m in matches))
        return matches[0]


def natural_key(path: Path) -> List:
    """Sort key putting img_2 before img_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def cut(img: Image.Image, word: Word) -> Image.Image:
    """The word's box cut from `img`, or its polygon rectified (see the module docstring)."""
    coords = np.asarray(word.box if word.box is not None else word.polygon, dtype=np.float64)
    if not np.isfinite(coords).all():
        raise CropError("coordinates are not finite numbers")
    if word.box is not None:
        x0, y0, x1, y1 = word.box
        if x1 <= x0 or y1 <= y0:
            raise CropError(f"degenerate box {list(word.box)}")
        left, top = max(0, math.floor(x0)), max(0, math.floor(y0))
        right, bottom = min(img.width, math.ceil(x1)), min(img.height, math.ceil(y1))
        if right <= left or bottom <= top:
            raise CropError(f"box {list(word.box)} lies outside the {img.width}x{img.height} image")
        return img.crop((left, top, right, bottom))
    polygon = coords.reshape(-1, 2)
    (x0, y0), (x1, y1) = polygon.min(axis=0), polygon.max(axis=0)
    if x1 <= 0 or y1 <= 0 or x0 >= img.width or y0 >= img.height:
        raise CropError(f"region lies outside the {img.width}x{img.height} image")
    try:
        quad = word_quad(polygon)
    except ValueError as err:
        raise CropError(f"degenerate region: {err}") from None
    width = round((np.linalg.norm(quad[1] - quad[0]) + np.linalg.norm(quad[2] - quad[3])) / 2)
    height = round((np.linalg.norm(quad[3] - quad[0]) + np.linalg.norm(quad[2] - quad[1])) / 2)
    if width < 1 or height < 1:
        raise CropError(f"degenerate region ({width}x{height} pixels)")
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    return img.transform((width, height), Image.Transform.PERSPECTIVE, perspective_coefficients(quad, target),
                         Image.Resampling.BICUBIC)


def encode(crop: Image.Image, source_format: Optional[str], quantization: Optional[dict]) -> bytes:
    """JPEG with the source's quantisation tables for a JPEG source (about its quality), else PNG."""
    buffer = io.BytesIO()
    if source_format == "JPEG" and quantization:
        crop.save(buffer, "JPEG", qtables=quantization)
    else:
        crop.save(buffer, "PNG")
    return buffer.getvalue()


def convert(annotations: Annotations, finder: ImageFinder, output: Path, overwrite: bool = False) -> Counter:
    """Write the annotated words to an LMDB at `output`. Each record that cannot be used (image missing or
    undecodable, region degenerate or outside the image) is reported by name as a warning and skipped. Returns
    the counts of `images` read, records `written` and records `skipped`."""
    counts: Counter = Counter()

    def skip(name: str, why: str) -> None:
        counts["skipped"] += 1
        warnings.warn(f"{name}: {why}; skipped")

    def records() -> Iterator[Tuple[bytes, str, str]]:
        for source in tqdm(annotations.sources, desc=output.name, unit="image"):
            counts["images"] += 1
            try:
                data = finder.find(source.image).read_bytes()
            except FileNotFoundError as err:
                if counts["found"] == 0 and counts["images"] >= ABORT_AFTER_MISSING:
                    raise FileNotFoundError(f"none of the first {counts['images']} images was found under "
                                            f"{', '.join(map(str, finder.roots))}: wrong image folder?") from None
                for word in source.words:
                    skip(word.name, str(err))
                continue
            counts["found"] += 1
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    source_format, quantization = img.format, getattr(img, "quantization", None)
                    rgb = to_rgb(img)
            except Exception as err:  # noqa: BLE001 - whatever the decoder raises, the image is unusable
                for word in source.words:
                    skip(word.name, f"image {source.image} does not decode ({type(err).__name__}: {err})")
                continue
            for word in source.words:
                if word.box is None and word.polygon is None:
                    yield data, word.label, word.name
                    continue
                try:
                    crop = cut(rgb, word)
                except CropError as err:
                    skip(word.name, str(err))
                    continue
                yield encode(crop, source_format, quantization), word.label, word.name

    counts["written"] = write_lmdb(output, records(), overwrite)
    for name, why in annotations.skipped:
        skip(name, why)
    return counts


@contextlib.contextmanager
def conversion_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Warnings as plain lines on stderr; a missing file, an existing output or malformed annotations end the
    command with its usage and the error."""
    with warnings_to_stderr():
        try:
            yield
        except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
            parser.error(str(err))


def run(annotations: Annotations, finder: ImageFinder, output: Path, overwrite: bool = False) -> Counter:
    """`convert`, then print one line: records written, the filtered ones per reason, the skipped ones."""
    counts = convert(annotations, finder, output, overwrite)
    line = f"wrote {counts['written']} records from {counts['images']} images to {output}"
    if annotations.filtered:
        line += "; left out: " + ", ".join(f"{reason} {n}" for reason, n in sorted(annotations.filtered.items()))
    if counts["skipped"]:
        line += f"; skipped {counts['skipped']} unusable records (named above)"
    print(line)
    return counts


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=Path, help="LMDB directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing LMDB at the output")


def converter_parser(description: str, annotations_help: str, images_help: str) -> argparse.ArgumentParser:
    """The command line of a converter reading ANNOTATIONS and IMAGES into OUTPUT (`--overwrite` to replace it)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    parser.add_argument("annotations", type=Path, help=annotations_help)
    parser.add_argument("images", type=Path, help=images_help)
    add_output_arguments(parser)
    return parser
