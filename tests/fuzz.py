"""What the fuzzing suite (tests/test_fuzz_*.py) generates: the inputs users hand the framework, good and bad, as
hypothesis strategies, and the number of examples a property runs under the loaded settings profile."""
import io
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import numpy as np
from hostile import Payload
from hypothesis import settings
from hypothesis import strategies as st
from PIL import Image

# A label's text, in any script (no surrogates, which no UTF-8 file holds).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


def examples(count: int) -> settings:
    """`count` examples under the default profile (conftest.py), as many more in proportion under `deep`."""
    return settings(max_examples=max(count, settings().max_examples * count // 8))


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _gray16(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.arange(width * height, dtype=np.uint16).reshape(height, width) * 37)  # mode I;16


def _animated() -> bytes:
    frames = [Image.new("P", (24, 12), color) for color in (1, 2, 3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


# Images that decode: name -> (file suffix, bytes).
GOOD_IMAGES: Dict[str, Tuple[str, Callable[[], bytes]]] = {
    "rgb": (".png", lambda: encode(Image.new("RGB", (40, 16), (200, 30, 30)), "PNG")),
    "1x1": (".png", lambda: encode(Image.new("RGB", (1, 1)), "PNG")),
    "10000x10": (".png", lambda: encode(Image.new("L", (10000, 10), 128), "PNG")),
    "10x10000": (".png", lambda: encode(Image.new("L", (10, 10000), 128), "PNG")),
    "cmyk": (".jpg", lambda: encode(Image.new("CMYK", (30, 12), (0, 50, 100, 0)), "JPEG")),
    "16-bit": (".png", lambda: encode(_gray16(32, 12), "PNG")),
    "palette+alpha": (".png", lambda: encode(Image.new("PA", (20, 10)).convert("RGBA"), "PNG")),
    "la": (".png", lambda: encode(Image.new("LA", (20, 10), (90, 120)), "PNG")),
    "1-bit": (".png", lambda: encode(Image.new("1", (20, 10), 1), "PNG")),
    "animated": (".png", _animated),  # a GIF named .png: read by content
    "jpeg": (".jpeg", lambda: encode(Image.new("RGB", (40, 16), (10, 200, 30)), "JPEG")),
}


@st.composite
def bad_image(draw: st.DrawFn) -> bytes:
    """Bytes that are no decodable image: empty, random, or a good image cut short."""
    kind = draw(st.sampled_from(["empty", "random", "truncated"]))
    if kind == "empty":
        return b""
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=200))
    whole = GOOD_IMAGES[draw(st.sampled_from(["rgb", "cmyk", "16-bit", "jpeg"]))][1]()
    return whole[:draw(st.integers(1, len(whole) // 2))]



def hostile_pickle(marker: Path, protocol: int) -> bytes:
    return pickle.dumps({"state_dict": {"w": Payload(marker)}, "hyper_parameters": {}}, protocol=protocol)
