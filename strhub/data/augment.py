"""The original's training RandAugment: 16 ops, 3 distinct ones per image, each applied with probability
0.5 at magnitude 5 (of 10), built on timm's auto-augment op functions and `RandAugment` without
touching timm's global op tables.

Randomness follows the global generators, so seeding both makes it reproducible: numpy picks the
ops (and draws the Poisson noise), Python's `random` draws the probability test, then the sign (ops
marked "±"), then the interpolation of geometric ops (bilinear or bicubic, grey fill).
"""
import random
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageFilter
from timm.data import auto_augment as aa

MAGNITUDE = 5
MAX_MAGNITUDE = 10.0
NUM_LAYERS = 3
PROB = 0.5
FILL = (128, 128, 128)
INTERPOLATIONS = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
# timm's "increasing" RandAugment ops without SharpnessIncreasing (it interferes with the blur), plus
# Gaussian blur and Poisson noise.
OP_NAMES = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
            "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
            "TranslateYRel", "GaussianBlur", "PoissonNoise")


def _size_bound(value: float, img: Image.Image, max_dim_factor: float) -> int:
    """`value` capped at `max_dim_factor` x the longer image side (at least 1), rounded."""
    return round(min(value, max(1.0, max_dim_factor * max(img.size))))


def rotate_expand(img: Image.Image, degrees: float, **kwargs) -> Image.Image:
    """timm's rotate with the canvas enlarged to keep the corners (the characters) inside."""
    return aa.rotate(img, degrees, expand=True, **kwargs)


def gaussian_blur(img: Image.Image, radius: float, **_) -> Image.Image:
    """PIL Gaussian blur, radius capped at 2 % of the longer side (at least 1)."""
    return img.filter(ImageFilter.GaussianBlur(_size_bound(radius, img, 0.02)))


def poisson_noise(img: Image.Image, lam: float, **_) -> Image.Image:
    """Additive Poisson noise as imgaug's `AdditivePoissonNoise(lam)`: one value per pixel with a random
    sign, shared by the channels, added with clipping. lam is capped at 20 % of the longer side and odd."""
    lam = _size_bound(lam, img, 0.2) | 1
    pixels = np.asarray(img, dtype=np.int16)
    noise = np.random.poisson(lam, size=pixels.shape[:2]) * np.random.choice((-1, 1), size=pixels.shape[:2])
    if pixels.ndim == 3:
        noise = noise[..., None]
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), img.mode)


def _signed_level(level: float, _hparams: dict, max_arg: float) -> Tuple[float]:
    """The argument for `level`, negated with probability 0.5 (timm's convention: `random() > 0.5`)."""
    value = level / MAX_MAGNITUDE * max_arg
    return -value if random.random() > 0.5 else value,


def _level(level: float, _hparams: dict, max_arg: float) -> Tuple[float]:
    return level / MAX_MAGNITUDE * max_arg,


# Ops whose function or level mapping differs from timm's, with their argument at magnitude 10 (the
# original's hparams; magnitude 5 gives half): degrees, shear factor, translation as a fraction of the
# image side, blur radius, Poisson lambda.
_OVERRIDES: Dict[str, Tuple[Callable, Callable]] = {
    "Rotate": (rotate_expand, partial(_signed_level, max_arg=30.0)),
    "ShearX": (aa.shear_x, partial(_signed_level, max_arg=0.9)),
    "ShearY": (aa.shear_y, partial(_signed_level, max_arg=0.2)),
    "TranslateXRel": (aa.translate_x_rel, partial(_signed_level, max_arg=0.10)),
    "TranslateYRel": (aa.translate_y_rel, partial(_signed_level, max_arg=0.30)),
    "GaussianBlur": (gaussian_blur, partial(_level, max_arg=4.0)),
    "PoissonNoise": (poisson_noise, partial(_level, max_arg=40.0)),
}


class AugmentOp:
    """One op: applied with probability `prob`, with the arguments `level_fn` derives from the magnitude
    (timm's protocol), grey fill and a random bilinear/bicubic resampling passed to geometric ops."""

    def __init__(self, name: str, aug_fn: Callable, level_fn: Optional[Callable], prob: float,
                 magnitude: float) -> None:
        self.name, self.aug_fn, self.level_fn, self.prob, self.magnitude = name, aug_fn, level_fn, prob, magnitude
        self.kwargs = {"fillcolor": FILL, "resample": INTERPOLATIONS}

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.prob:
            return img
        args = self.level_fn(self.magnitude, {}) if self.level_fn is not None else ()
        return self.aug_fn(img, *args, **self.kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, p={self.prob}, m={self.magnitude})"


def augment_ops(names: Tuple[str, ...] = OP_NAMES, prob: float = PROB, magnitude: float = MAGNITUDE) -> List[AugmentOp]:
    """The ops by name: timm's op function and level mapping unless overridden here."""

    def functions(name: str) -> Tuple[Callable, Optional[Callable]]:
        return _OVERRIDES[name] if name in _OVERRIDES else (aa.NAME_TO_OP[name], aa.LEVEL_TO_ARG[name])

    return [AugmentOp(name, *functions(name), prob, magnitude) for name in names]


def rand_augment_transform(magnitude: float = MAGNITUDE, num_layers: int = NUM_LAYERS,
                           prob: float = PROB) -> aa.RandAugment:
    """timm's RandAugment over the 16 ops; uniform choice weights make it pick `num_layers` distinct ops."""
    ops = augment_ops(OP_NAMES, prob, magnitude)
    return aa.RandAugment(ops, num_layers, choice_weights=[1.0 / len(ops)] * len(ops))
