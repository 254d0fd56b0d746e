"""Render synthetic word images with strhub's own fonts and the machine's, and write train/val/test LMDBs.

Texts are dictionary words (a built-in English list or --words, in any script), numbers and random strings
over the charset; each image varies font, size, colours, background, outline, rotation, perspective, blur,
noise and JPEG quality. Only fonts that have glyphs for every character of a text are used for it; words
that no single font can draw are skipped and counted. Labels are stored in NFC, in reading (logical)
order. Text with right-to-left letters (Arabic, Hebrew) or combining marks (Devanagari, Thai) is shaped
with libraqm; --vertical renders a share of the CJK texts top to bottom, turned a quarter counter-clockwise
so that they read from left to right as the recognisers see tall crops.
The output follows the data module's layout: OUT/train/<train-dir>, OUT/val, OUT/test/<test-name>.
The same seed, fonts and settings give byte-identical LMDBs, whatever the number of processes.

    python -m strhub.tools.render_words data/zh --charset-file zh.txt --words zh_words.txt \\
        --fonts /usr/share/fonts/truetype/wqy --vertical 0.2
"""
import argparse
import io
import multiprocessing
import string
import sys
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, features
from tqdm import tqdm

from strhub.tools.common import HelpFormatter, add_charset_arguments, charset_from_args
from strhub.tools.create_lmdb import write_lmdb
from strhub.tools.geometry import perspective_coefficients
from strhub.tools.typefaces import (
    FONT_DIRS,
    FONT_PACKAGES,
    RAQM_PACKAGES,
    SCRIPT_FONT_PACKAGES,
    find_fonts,
    glyph_coverage,
    is_vertical_script,
    load_font,
    needs_shaping,
)

SPLITS = ("train", "val", "test")
NUMBER_SHARE = 0.15  # share of the texts that are numbers, after the words
SHOWN_UNUSABLE = 5  # skipped words named in the report
SHOWN_UNCOVERED = 20  # characters without a glyph named in the warning
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


def _luma(colour: Sequence[int]) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


class WordRenderer:
    """Renders `(encoded image, label)` for sample `index` of a split from a per-sample seeded generator.

    `word_share` of the texts are words (the rest are numbers and random strings, which hold no
    combining marks: those come with the words); `vertical` is the
    share of the all-CJK texts rendered top to bottom. `word_counts` counts the words used and the
    skipped ones per reason, `uncovered` the characters of the charset that no font draws."""

    def __init__(self, charset: str, fonts: Sequence[Path], words: Sequence[str], height: int, width: int,
                 min_length: int, max_length: int, font_sizes: Tuple[int, int], image_format: str, seed: int,
                 word_share: float = 0.55, vertical: float = 0.0) -> None:
        self.height, self.width = height, width
        self.min_length, self.max_length = min_length, max_length
        self.font_sizes = font_sizes
        self.image_format = image_format
        self.seed = seed
        self.word_share = word_share
        self.vertical = vertical
        self.fonts = [str(f) for f in fonts]
        self.coverage = [glyph_coverage(f, charset)
                         for f in tqdm(fonts, desc="glyph coverage", unit="font", disable=None, leave=False)]
        usable = set().union(*self.coverage)
        if not usable:
            raise RuntimeError(f"none of the {len(fonts)} fonts has glyphs for the charset {charset[:40]!r}... "
                               f"(fonts for other scripts: {SCRIPT_FONT_PACKAGES}; or pass --fonts)")
        self.uncovered = "".join(c for c in charset if c not in usable)
        self.alphabet = "".join(c for c in charset if c in usable)
        self.allowed = set(self.alphabet)
        self.random_alphabet = "".join(c for c in self.alphabet if not unicodedata.category(c).startswith("M"))
        if not self.random_alphabet:
            raise RuntimeError(f"the charset {charset[:40]!r} holds only combining marks: random strings need letters")
        self.font_alphabets = ["".join(c for c in self.random_alphabet if c in covered) for covered in self.coverage]
        self.words, self.word_counts, self.unusable_words = self._usable_words(words, set(charset))
        self.digits = "".join(c for c in string.digits if c in self.allowed)
        if (vertical or any(needs_shaping(c) for c in self.alphabet)) and not features.check("raqm"):
            raise RuntimeError("the charset holds right-to-left letters or combining marks, or --vertical is set: "
                               "that needs Pillow's libraqm layout, which is unavailable "
                               f"(PIL.features.check('raqm') is False); install it: apt-get install {RAQM_PACKAGES}")

    def _covered(self, text: str) -> bool:
        """Whether some font has glyphs for every character of `text`."""
        chars = set(text)
        return any(chars <= covered for covered in self.coverage)

    def _usable_words(self, words: Sequence[str], charset: set) -> Tuple[List[str], Counter, List[str]]:
        """The words (in NFC) that can be rendered, the count per outcome, and a few of the skipped ones
        that lack glyphs."""
        kept, counts, unusable = [], Counter(), []
        for word in (unicodedata.normalize("NFC", w) for w in words):
            if not self.min_length <= len(word) <= self.max_length:
                counts["length outside --min-length/--max-length"] += 1
            elif not set(word) <= charset:
                counts["characters outside the charset"] += 1
            elif not set(word) <= self.allowed:
                counts["characters no font has"] += 1
                unusable.append(word)
            elif not self._covered(word):
                counts["no single font has all its glyphs"] += 1
                unusable.append(word)
            else:
                counts["used"] += 1
                kept.append(word)
        return kept, counts, unusable[:SHOWN_UNUSABLE]

    def _text(self, rng: np.random.Generator) -> str:
        kind = rng.random()
        if kind < self.word_share and self.words:
            word = self.words[rng.integers(len(self.words))]
            style = rng.random()
            variant = word.upper() if style < 0.25 else word.title() if style < 0.5 else word
            return variant if self._covered(variant) else word
        length = int(rng.integers(self.min_length, self.max_length + 1))
        source = self.digits if self.word_share <= kind < self.word_share + NUMBER_SHARE and self.digits else \
            self.random_alphabet
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
        if not fonts:  # a random string that no single font draws: draw it again from one font's characters
            choices = [i for i, alphabet in enumerate(self.font_alphabets) if alphabet]
            choice = choices[rng.integers(len(choices))]
            source = self.font_alphabets[choice]
            text = "".join(source[i] for i in rng.integers(len(source), size=len(text)))
            fonts = [self.fonts[choice]]
        vertical = self.vertical > 0 and is_vertical_script(text) and rng.random() < self.vertical
        shaped = vertical or needs_shaping(text)
        font = load_font(fonts[rng.integers(len(fonts))], int(rng.integers(self.font_sizes[0], self.font_sizes[1] + 1)),
                     shaped)
        direction = "ttb" if vertical else None
        background, colour = self._colours(rng)
        stroke = int(rng.integers(1, max(2, font.size // 12) + 1)) if rng.random() < 0.15 else 0
        left, top, right, bottom = font.getbbox(text, stroke_width=stroke, direction=direction)
        pad_x, pad_y = (int(v) for v in rng.integers(1, max(2, font.size // 3), size=2))
        size = (right - left + 2 * pad_x, bottom - top + 2 * pad_y)
        img = self._background(rng, size, background)
        stroke_fill = tuple(255 - v for v in colour)
        ImageDraw.Draw(img).text((pad_x - left, pad_y - top), text, fill=colour, font=font, stroke_width=stroke,
                                 stroke_fill=stroke_fill, direction=direction)
        if vertical:  # the column's top goes to the left: the text then reads from left to right
            img = img.transpose(Image.Transpose.ROTATE_90)
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
        return buffer.getvalue(), unicodedata.normalize("NFC", text)


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
            records = tqdm(render_split(renderer, split, counts[split], workers), total=counts[split], desc=split,
                           unit="img", disable=None, leave=False)
            write_lmdb(target, records, overwrite)
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
    parser.add_argument("--words", type=Path,
                        help="word list, one word or phrase per line (default: a built-in English list); phrases "
                             "with spaces need the space in the charset")
    parser.add_argument("--word-share", type=float, default=0.55,
                        help="share of the texts taken from the word list (the rest: numbers, random strings)")
    parser.add_argument("--vertical", type=float, default=0.0,
                        help="share of the all-CJK texts rendered top to bottom (then turned to read left to right)")
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
    for name in ("word_share", "vertical"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} is a share between 0 and 1, got {getattr(args, name)}")
    words = [line.strip() for line in args.words.read_text(encoding="utf-8-sig").splitlines() if line.strip()] \
        if args.words else _WORDS
    try:
        renderer = WordRenderer(charset_from_args(args), fonts, words, args.height, args.width, args.min_length,
                                args.max_length, tuple(args.font_sizes), args.format, args.seed, args.word_share,
                                args.vertical)
    except RuntimeError as err:
        parser.error(str(err))
    if renderer.uncovered:
        more = "..." if len(renderer.uncovered) > SHOWN_UNCOVERED else ""
        print(f"warning: no font has glyphs for {len(renderer.uncovered)} characters of the charset, which are not "
              f"rendered: {renderer.uncovered[:SHOWN_UNCOVERED]!r}{more} (fonts for other scripts: "
              f"{SCRIPT_FONT_PACKAGES})", file=sys.stderr)
    counts = {"train": args.train, "val": args.val, "test": args.test}
    written = generate(args.output, counts, renderer, args.train_dir, args.test_name, args.workers, args.overwrite)
    usable = sum(1 for covered in renderer.coverage if covered)
    for split, target in written.items():
        print(f"{split}: {counts[split]} images in {target}")
    print(f"fonts: {usable} of {len(fonts)} usable for the charset")
    skipped = ", ".join(f"{reason}: {count}" for reason, count in renderer.word_counts.items() if reason != "used")
    examples = f"; e.g. {', '.join(renderer.unusable_words)}" if renderer.unusable_words else ""
    print(f"words: {renderer.word_counts['used']} of {len(words)} used" + (f" (skipped {skipped}{examples})"
                                                                           if skipped else ""))


if __name__ == "__main__":
    main()
