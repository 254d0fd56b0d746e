"""Transforms: output shapes and normalisation per stage, rotation, and the RandAugment recipe (ops,
arguments at magnitude 5, three distinct ops, determinism under a seed)."""
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from strhub.data import augment
from strhub.data.transforms import OPENAI_MEAN, OPENAI_STD, ToNormalizedTensor, get_transform


def noise_image(width: int = 60, height: int = 20, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("img_size", [(224, 224), (32, 128)])
@pytest.mark.parametrize("augment_", [False, True])
def test_output_shape_and_type(img_size, augment_):
    out = get_transform(img_size, augment=augment_)(noise_image())
    assert out.shape == (3, *img_size) and out.dtype == torch.float32


def test_test_normalisation_is_half_and_openai_is_selectable():
    white, black = Image.new("RGB", (50, 20), "white"), Image.new("L", (50, 20), 0)
    assert torch.all(get_transform((32, 32))(white) == 1) and torch.all(get_transform((32, 32))(black) == -1)
    openai = get_transform((32, 32), mean=OPENAI_MEAN, std=OPENAI_STD)(white)
    expected = (1 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    assert torch.allclose(openai[:, 5, 5], expected)


def test_tensor_conversion_equals_torchvision_to_tensor_then_normalize():
    reference = T.Compose([T.ToTensor(), T.Normalize(OPENAI_MEAN, OPENAI_STD)])
    for seed in range(3):
        img = noise_image(seed=seed)
        assert torch.equal(ToNormalizedTensor(OPENAI_MEAN, OPENAI_STD)(img), reference(img))
    assert torch.equal(ToNormalizedTensor(0.5, 0.5)(img), T.Compose([T.ToTensor(), T.Normalize(0.5, 0.5)])(img))


def test_resize_is_bicubic_straight_to_size():
    img = noise_image(90, 30)
    expected = T.ToTensor()(img.resize((128, 32), Image.Resampling.BICUBIC)) * 2 - 1
    assert torch.allclose(get_transform((32, 128))(img), expected, atol=1e-6)


def test_rotation_is_counter_clockwise_with_expand():
    img = Image.new("RGB", (40, 20), "black")
    img.paste((255, 255, 255), (20, 0, 40, 20))  # right half white
    out = get_transform((32, 32), rotation=90)(img)  # right half goes to the top, canvas 20x40
    assert torch.all(out[:, :14] == 1) and torch.all(out[:, 18:] == -1)


def test_sixteen_ops_of_the_original():
    names = [op.name for op in augment.rand_augment_transform().ops]
    assert names == ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                     "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "ShearX",
                     "ShearY", "TranslateXRel", "TranslateYRel", "GaussianBlur", "PoissonNoise"]
    assert all(op.prob == 0.5 and op.magnitude == 5 for op in augment.rand_augment_transform().ops)


@pytest.mark.parametrize("name, magnitude", [("Rotate", 15.0), ("ShearX", 0.45), ("ShearY", 0.1),
                                             ("TranslateXRel", 0.05), ("TranslateYRel", 0.15),
                                             ("ColorIncreasing", None), ("ContrastIncreasing", None),
                                             ("BrightnessIncreasing", None)])
def test_signed_arguments_at_magnitude_five(name, magnitude):
    op = augment.augment_ops((name,))[0]
    values = {round(op.level_fn(op.magnitude, {})[0], 6) for _ in range(50)}
    expected = {1.45, 0.55} if magnitude is None else {magnitude, -magnitude}
    assert values == expected


@pytest.mark.parametrize("name, args", [("PosterizeIncreasing", (2,)), ("SolarizeIncreasing", (128,)),
                                        ("SolarizeAdd", (55,)), ("GaussianBlur", (2.0,)), ("PoissonNoise", (20.0,))])
def test_unsigned_arguments_at_magnitude_five(name, args):
    op = augment.augment_ops((name,))[0]
    assert op.level_fn(op.magnitude, {}) == args


def test_rotate_expands_the_canvas_with_grey_fill():
    op = augment.augment_ops(("Rotate",), prob=1.0)[0]
    out = op(Image.new("RGB", (100, 20), "black"))
    assert out.size[0] > 100 and out.size[1] > 20
    assert out.getpixel((0, 0)) == (128, 128, 128)


def test_gaussian_blur_radius_follows_the_image_size():
    small, large = noise_image(30, 10), noise_image(200, 40)
    op = augment.augment_ops(("GaussianBlur",), prob=1.0)[0]
    assert op(small).tobytes() == small.filter(ImageFilter.GaussianBlur(1)).tobytes()  # 0.02 * 30 < 1 → 1
    assert op(large).tobytes() == large.filter(ImageFilter.GaussianBlur(2)).tobytes()  # min(2, 0.02 * 200)


def test_poisson_noise_is_shared_by_the_channels_with_random_sign():
    grey = Image.new("RGB", (64, 48), (128, 128, 128))
    op = augment.augment_ops(("PoissonNoise",), prob=1.0)[0]
    np.random.seed(0)
    noise = np.asarray(op(grey)).astype(int) - 128
    assert (noise[..., 0] == noise[..., 1]).all() and (noise[..., 0] == noise[..., 2]).all()
    lam = 13  # round(min(20, 0.2 * 64)) | 1
    assert abs(np.abs(noise[..., 0]).mean() - lam) < 1.0
    assert 0.4 < (noise[..., 0] > 0).mean() < 0.6


def test_three_distinct_ops_per_image():
    transform = augment.rand_augment_transform()
    chosen = []
    transform.ops = [lambda img, i=i: chosen.append(i) or img for i in range(16)]
    for _ in range(200):
        transform(noise_image())
        assert len(set(chosen[-3:])) == 3
    assert set(chosen) == set(range(16))


def test_rand_augment_is_deterministic_under_a_seed():
    transform = get_transform((32, 128), augment=True)

    def run(seed: int) -> torch.Tensor:
        random.seed(seed)
        np.random.seed(seed)
        return torch.stack([transform(noise_image(seed=i)) for i in range(12)])

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    plain = torch.stack([get_transform((32, 128))(noise_image(seed=i)) for i in range(12)])
    assert not torch.equal(run(1), plain)
