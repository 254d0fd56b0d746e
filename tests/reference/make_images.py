"""Render the 24 small images of the equivalence fixture (22 words + 2 noise images).

The PNG files in ``images/`` are the fixture; this script documents how they were made. Font
rasterisation depends on the Pillow/FreeType build, so re-running it on another machine may change
pixels, after which ``original_outputs.pt`` has to be regenerated too (see ``README.md``).

Usage: ``python tests/reference/make_images.py [OUT_DIR]``
"""
import sys
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HEIGHT, WIDTH = 32, 128

# (text, foreground, background); lengths 1 to 15, mixed case, digits and punctuation.
WORDS: List[Tuple[str, Tuple[int, int, int], Tuple[int, int, int]]] = [
    ("a", (0, 0, 0), (255, 255, 255)),
    ("7", (20, 20, 120), (240, 230, 200)),
    ("GO", (255, 255, 255), (30, 90, 30)),
    ("the", (10, 10, 10), (200, 200, 200)),
    ("Cat", (180, 20, 20), (255, 255, 255)),
    ("STOP", (255, 255, 255), (200, 0, 0)),
    ("hello", (0, 0, 0), (250, 250, 210)),
    ("World!", (40, 40, 40), (180, 210, 240)),
    ("2024", (0, 0, 0), (255, 255, 255)),
    ("coffee", (90, 50, 20), (245, 235, 220)),
    ("Street", (255, 255, 255), (20, 60, 160)),
    ("London", (0, 0, 0), (230, 230, 230)),
    ("PARKING", (255, 255, 255), (0, 70, 180)),
    ("exit-9", (0, 120, 0), (255, 255, 255)),
    ("Caf3", (60, 0, 60), (255, 240, 250)),
    ("keep-out", (0, 0, 0), (255, 220, 0)),
    ("welcome", (30, 30, 30), (255, 255, 255)),
    ("12:45pm", (255, 80, 0), (10, 10, 10)),
    ("restaurant", (0, 0, 0), (220, 240, 220)),
    ("Information", (255, 255, 255), (60, 60, 60)),
    ("SUPERMARKET", (200, 0, 0), (255, 255, 255)),
    ("www.shop24.com", (0, 0, 90), (235, 235, 235)),
]
NOISE_SEED = 20240502


def render_word(text: str, fg, bg) -> Image.Image:
    """Largest bundled-default-font size that fits, centred on a HEIGHT x WIDTH canvas."""
    image = Image.new("RGB", (WIDTH, HEIGHT), bg)
    draw = ImageDraw.Draw(image)
    for size in range(28, 5, -1):
        font = ImageFont.load_default(size=size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left <= WIDTH - 6 and bottom - top <= HEIGHT - 4:
            break
    x = (WIDTH - (right - left)) / 2 - left
    y = (HEIGHT - (bottom - top)) / 2 - top
    draw.text((x, y), text, fill=fg, font=font)
    return image


def noise_images() -> List[Image.Image]:
    rng = np.random.default_rng(NOISE_SEED)
    uniform = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    blobs = Image.fromarray(rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8))
    blobs = blobs.filter(ImageFilter.GaussianBlur(radius=2))
    return [Image.fromarray(uniform), blobs]


def make_images(out_dir: Path) -> List[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    images = [render_word(*word) for word in WORDS] + noise_images()
    paths = []
    for index, image in enumerate(images):
        path = out_dir / f"{index:02d}.png"
        image.save(path, optimize=True)
        paths.append(path)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "images"
    for written in make_images(target):
        print(written)
