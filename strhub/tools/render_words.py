"""Render synthetic word images with the fonts installed on this machine and write train/val/test LMDBs.

Texts are dictionary words (a built-in English list or --words), numbers and random strings over the
charset; each image varies font, size, colours, background, outline, rotation, perspective, blur,
noise and JPEG quality. Only fonts that have glyphs for every character of a text are used for it.
The output follows the data module's layout: OUT/train/<train-dir>, OUT/val, OUT/test/<test-name>.
The same seed, fonts and settings give byte-identical LMDBs, whatever the number of processes.
"""
import argparse
import io
import multiprocessing
import string
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from strhub.tools.common import HelpFormatter, add_charset_arguments, charset_from_args
from strhub.tools.create_lmdb import write_lmdb
from strhub.tools.geometry import perspective_coefficients

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
FONT_PACKAGES = "fonts-dejavu-core fonts-liberation2 fonts-freefont-ttf"
SPLITS = ("train", "val", "test")
_MISSING_GLYPH = "\U0010fffd"  # a private-use code point: fonts render their "missing glyph" box for it
_WORDS = """
the of and to in is you that it he was for on are as with his they at be this have from or one had by word but
not what all were we when your can said there use an each which she do how their if will up other about out
many then them these so some her would make like him into time has look two more write go see number no way
could people my than first water been call who oil its now find long down day did get come made may part
open close push pull exit entry stop slow danger caution keep left right north south east west street road
avenue lane drive park station hotel cafe coffee bar pizza burger restaurant bakery market shop store sale
price free new best quality fresh hot cold daily hours menu bank post office police fire hospital school
university library museum theatre cinema music art gallery garden center centre city town village bridge
river lake beach harbour airport terminal gate platform train bus taxi parking toilet ladies gentlemen
welcome thank please enjoy hello world love happy birthday christmas summer winter spring autumn monday
tuesday wednesday thursday friday saturday sunday january february march april june july august september
october november december red green blue yellow black white orange purple silver gold diamond star moon
sun sky cloud rain snow wind storm ocean mountain forest island desert valley castle tower palace church
temple house home room kitchen bedroom door window floor wall roof fence glass paper book pen phone
computer internet email online service support team club sport football soccer tennis golf hockey game
player champion winner final match score goal point record company limited group international national
royal united global express central general public private special original classic modern vintage
grand super mega mini smart easy quick fast power energy light dark night morning evening lunch dinner
breakfast tea wine beer juice milk water bread cheese chicken beef fish rice noodle salad soup cake
chocolate candy fruit apple banana lemon cherry grape strawberry tomato potato onion garlic pepper salt
sugar honey butter cream pharmacy doctor dental clinic beauty salon barber fashion shoes jeans shirt
dress jacket hat bag watch jewelry toys gifts flowers books news times journal daily weekly radio
television video photo camera studio design build repair motor auto garage tire wash laundry clean
""".split()


def find_fonts(paths: Sequence[str] = ()) -> List[Path]:
    """Font files (.ttf, .otf, .ttc) in the given files/folders, or in the system font folders, sorted."""
    found = set()
    for path in map(lambda p: Path(p).expanduser(), paths or FONT_DIRS):
        if path.is_file() and path.suffix.lower() in FONT_SUFFIXES:
            found.add(path)
        elif path.is_dir():
            found.update(f for f in path.rglob("*") if f.suffix.lower() in FONT_SUFFIXES and f.is_file())
    return sorted(found)


@lru_cache(maxsize=None)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


def glyph_coverage(path: Path, charset: str) -> frozenset:
    """The characters of `charset` the font has a glyph for (a glyph unlike its missing-glyph box)."""
    font = _font(str(path), 24)

    def bitmap(char: str) -> Tuple[Tuple[int, int], bytes]:
        mask = font.getmask(char)
        return mask.size, bytes(mask)

    missing = bitmap(_MISSING_GLYPH)
    return frozenset(char for char in charset if char.isspace() or bitmap(char) != missing)


def _luma(colour: Sequence[int]) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


class WordRenderer:
    """Renders `(encoded image, label)` for sample `index` of a split from a per-sample seeded generator."""

    def __init__(self, charset: str, fonts: Sequence[Path], words: Sequence[str], height: int, width: int,
                 min_length: int, max_length: int, font_sizes: Tuple[int, int], image_format: str, seed: int) -> None:
        self.height, self.width = height, width
        self.min_length, self.max_length = min_length, max_length
        self.font_sizes = font_sizes
        self.image_format = image_format
        self.seed = seed
        self.fonts = [str(f) for f in fonts]
        self.coverage = [glyph_coverage(f, charset) for f in fonts]
        usable = set().union(*self.coverage)
        if not usable:
            raise RuntimeError(f"none of the {len(fonts)} fonts has glyphs for the charset {charset[:40]!r}...")
        self.alphabet = "".join(c for c in charset if c in usable)
        self.allowed = set(self.alphabet)
        self.words = [w for w in words if min_length <= len(w) <= max_length and set(w) <= self.allowed]
        self.digits = "".join(c for c in string.digits if c in self.allowed)

    def _text(self, rng: np.random.Generator) -> str:
        kind = rng.random()
        if kind < 0.55 and self.words:
            word = self.words[rng.integers(len(self.words))]
            style = rng.random()
            variant = word.upper() if style < 0.25 else word.title() if style < 0.5 else word
            return variant if set(variant) <= self.allowed else word
        length = int(rng.integers(self.min_length, self.max_length + 1))
        source = self.digits if 0.55 <= kind < 0.7 and self.digits else self.alphabet
        return "".join(source[i] for i in rng.integers(len(source), size=length))

    def _colours(self, rng: np.random.Generator) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        background = tuple(int(v) for v in rng.integers(0, 256, size=3))
        while True:
            text = tuple(int(v) for v in rng.integers(0, 256, size=3))
            if abs(_luma(text) - _luma(background)) >= 90:
                return background, text

    def _background(self, rng: np.random.Generator, size: Tuple[int, int], colour: Tuple[int, ...]) -> Image.Image:
        """A plain background, or a linear gradient towards a nearby colour."""
        if rng.random() < 0.6:
            return Image.new("RGB", size, colour)
        width, height = size
        other = np.clip(np.array(colour) + rng.integers(-60, 61, size=3), 0, 255)
        ramp = np.linspace(0.0, 1.0, width)[None, :, None] if rng.random() < 0.5 else \
            np.linspace(0.0, 1.0, height)[:, None, None]
        pixels = np.broadcast_to(np.array(colour) * (1 - ramp) + other * ramp, (height, width, 3))
        return Image.fromarray(pixels.astype(np.uint8))

    def render(self, split: str, index: int) -> Tuple[bytes, str]:
        rng = np.random.default_rng((self.seed, SPLITS.index(split), index))
        text = self._text(rng)
        fonts = [f for f, covered in zip(self.fonts, self.coverage) if set(text) <= covered]
        if not fonts:  # every character has a font, but not every text: fall back to one character
            text = self.alphabet[rng.integers(len(self.alphabet))]
            fonts = [f for f, covered in zip(self.fonts, self.coverage) if text in covered]
        font = _font(fonts[rng.integers(len(fonts))], int(rng.integers(self.font_sizes[0], self.font_sizes[1] + 1)))
        background, colour = self._colours(rng)
        stroke = int(rng.integers(1, max(2, font.size // 12) + 1)) if rng.random() < 0.15 else 0
        left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
        pad_x, pad_y = (int(v) for v in rng.integers(1, max(2, font.size // 3), size=2))
        size = (right - left + 2 * pad_x, bottom - top + 2 * pad_y)
        img = self._background(rng, size, background)
        stroke_fill = tuple(255 - v for v in colour)
        ImageDraw.Draw(img).text((pad_x - left, pad_y - top), text, fill=colour, font=font, stroke_width=stroke,
                                 stroke_fill=stroke_fill)
        if rng.random() < 0.5:
            img = img.rotate(float(rng.uniform(-8, 8)), Image.Resampling.BICUBIC, expand=True, fillcolor=background)
        if rng.random() < 0.3:
            w, h = img.size
            corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
            moved = corners + rng.uniform(-0.12, 0.12, size=(4, 2)) * [h, h]
            img = img.transform(img.size, Image.Transform.PERSPECTIVE, perspective_coefficients(corners, moved),
                                Image.Resampling.BICUBIC, fillcolor=background)
        out_w = self.width or max(1, round(img.width * self.height / img.height))
        img = img.resize((out_w, self.height), Image.Resampling.BICUBIC)
        if rng.random() < 0.3:
            img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
        if rng.random() < 0.3:
            noise = rng.normal(0.0, rng.uniform(2, 12), size=(img.height, img.width, 1))
            img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        if self.image_format == "jpeg":
            img.save(buffer, "JPEG", quality=int(rng.integers(75, 96)))
        else:
            img.save(buffer, "PNG")
        return buffer.getvalue(), text


_WORKER: Optional[WordRenderer] = None


def _init_worker(renderer: WordRenderer) -> None:
    global _WORKER
    _WORKER = renderer


def _render_in_worker(job: Tuple[str, int]) -> Tuple[bytes, str]:
    return _WORKER.render(*job)


def render_split(renderer: WordRenderer, split: str, count: int, workers: int = 1) -> Iterator[Tuple[bytes, str]]:
    """The records of a split, in index order, rendered in `workers` processes."""
    jobs = [(split, index) for index in range(count)]
    if workers <= 1:
        yield from (renderer.render(*job) for job in jobs)
        return
    with multiprocessing.Pool(workers, _init_worker, (renderer,)) as pool:
        yield from pool.imap(_render_in_worker, jobs, chunksize=64)


def generate(output: Path, counts: Dict[str, int], renderer: WordRenderer, train_dir: str = "synth",
             test_name: str = "synth", workers: int = 1, overwrite: bool = False) -> Dict[str, Path]:
    """Write the splits with a non-zero count under `output` and return their LMDB directories."""
    targets = {"train": output / "train" / train_dir, "val": output / "val", "test": output / "test" / test_name}
    for split, target in targets.items():
        if counts.get(split):
            write_lmdb(target, render_split(renderer, split, counts[split], workers), overwrite)
    return {split: target for split, target in targets.items() if counts.get(split)}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("output", type=Path, help="dataset root to write")
    parser.add_argument("--train", type=int, default=10000, help="training images")
    parser.add_argument("--val", type=int, default=1000, help="validation images")
    parser.add_argument("--test", type=int, default=1000, help="test images")
    parser.add_argument("--train-dir", default="synth", help="training set folder: OUT/train/<train-dir>")
    parser.add_argument("--test-name", default="synth", help="test set folder: OUT/test/<test-name>")
    add_charset_arguments(parser, default="94")
    parser.add_argument("--words", type=Path, help="word list, one per line (default: a built-in English list)")
    parser.add_argument("--fonts", nargs="+", default=(),
                        help=f"font files or folders (when absent: {', '.join(FONT_DIRS)})")
    parser.add_argument("--height", type=int, default=32, help="image height in pixels")
    parser.add_argument("--width", type=int, default=0, help="image width in pixels (0: keep the aspect ratio)")
    parser.add_argument("--min-length", type=int, default=1, help="shortest random string")
    parser.add_argument("--max-length", type=int, default=12, help="longest text")
    parser.add_argument("--font-sizes", type=int, nargs=2, default=(20, 44), metavar=("MIN", "MAX"),
                        help="font size range in pixels, before scaling to the image height")
    parser.add_argument("--format", choices=("jpeg", "png"), default="jpeg", help="image encoding")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    parser.add_argument("--overwrite", action="store_true", help="replace existing LMDBs")
    args = parser.parse_args(argv)
    fonts = find_fonts(args.fonts)
    if not fonts:
        parser.error(f"no font files (.ttf/.otf/.ttc) found in {', '.join(map(str, args.fonts or FONT_DIRS))}; "
                     f"install some, e.g. `apt-get install {FONT_PACKAGES}`, or pass --fonts")
    words = args.words.read_text(encoding="utf-8").split() if args.words else _WORDS
    renderer = WordRenderer(charset_from_args(args), fonts, words, args.height, args.width, args.min_length,
                            args.max_length, tuple(args.font_sizes), args.format, args.seed)
    counts = {"train": args.train, "val": args.val, "test": args.test}
    written = generate(args.output, counts, renderer, args.train_dir, args.test_name, args.workers, args.overwrite)
    usable = sum(1 for covered in renderer.coverage if covered)
    for split, target in written.items():
        print(f"{split}: {counts[split]} images in {target}")
    print(f"fonts: {usable} of {len(fonts)} usable for the charset")


if __name__ == "__main__":
    main()
