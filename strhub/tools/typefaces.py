"""The fonts words are rendered with: strhub's own (strhub/tools/fonts, with their licences) and the system's, which
characters each draws, and which texts need shaping (right-to-left, combining marks) or are written vertically."""
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import List, Sequence, Tuple

from PIL import ImageFont

PACKAGED_FONTS = Path(__file__).with_name("fonts")  # Latin, Greek, Cyrillic, Arabic, Devanagari, common Han: README.md
FONT_DIRS = (str(PACKAGED_FONTS), "/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
FONT_PACKAGES = "fonts-dejavu-core fonts-liberation2 fonts-freefont-ttf"
SCRIPT_FONT_PACKAGES = "fonts-wqy-microhei for CJK, fonts-lohit-deva for Devanagari, fonts-noto-core for most others"
RAQM_PACKAGES = "libfribidi0 libraqm0"
_MISSING_GLYPH = "\U0010fffd"  # a private-use code point: fonts render their "missing glyph" box for it


def find_fonts(paths: Sequence[str] = ()) -> List[Path]:
    """Font files (.ttf, .otf, .ttc) in the given files/folders, else in strhub's and the system's font folders."""
    found = set()
    for path in map(lambda p: Path(p).expanduser(), paths or FONT_DIRS):
        if path.is_file() and path.suffix.lower() in FONT_SUFFIXES:
            found.add(path)
        elif path.is_dir():
            found.update(f for f in path.rglob("*") if f.suffix.lower() in FONT_SUFFIXES and f.is_file())
    return sorted(found)


@lru_cache(maxsize=None)
def load_font(path: str, size: int, shaped: bool = False) -> ImageFont.FreeTypeFont:
    layout = ImageFont.Layout.RAQM if shaped else ImageFont.Layout.BASIC
    return ImageFont.truetype(path, size, layout_engine=layout)


def needs_shaping(text: str) -> bool:
    """Whether glyph-by-glyph layout would draw `text` wrongly: it holds right-to-left letters or
    numbers (their order and joining forms) or combining marks (their placement, conjuncts)."""
    return any(unicodedata.bidirectional(char) in ("R", "AL", "AN") or unicodedata.category(char).startswith("M")
               for char in text)


def is_vertical_script(text: str) -> bool:
    """Whether every character of `text` is wide (CJK ideographs, kana, Hangul, full-width forms), the
    characters that are written top to bottom upright."""
    return all(unicodedata.east_asian_width(char) in ("W", "F") for char in text)


def glyph_coverage(path: Path, charset: str) -> frozenset:
    """The characters of `charset` the font has a glyph for (a glyph unlike its missing-glyph box)."""
    font = load_font(str(path), 24)

    def bitmap(char: str) -> Tuple[Tuple[int, int], bytes]:
        mask = font.getmask(char)
        return mask.size, bytes(mask)

    missing = bitmap(_MISSING_GLYPH)
    return frozenset(char for char in charset if char.isspace() or bitmap(char) != missing)
