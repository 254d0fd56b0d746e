"""Image transforms: any PIL image to the normalised tensor the model reads, with optional augmentation."""
from functools import partial
from typing import Callable, List, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F

from strhub.data.augment import rand_augment_transform

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
Stat = Union[float, Sequence[float]]


class ToNormalizedTensor:
    """PIL RGB image → float tensor (3, H, W) holding (pixel / 255 - mean) / std: bitwise what
    torchvision's ToTensor then Normalize give, with fewer copies."""

    def __init__(self, mean: Stat, std: Stat) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return F.pil_to_tensor(img).float().div_(255).sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB as the original does (`convert('RGB')`: an alpha channel is
    dropped, not composited), except that 16-bit images are scaled down (PIL's conversion clips them at
    255) and 32-bit integer and float images are stretched over their value range."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        pixels = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            low, high = 0.0, 65535.0
        else:
            low, high = float(pixels.min()), max(float(pixels.max()), float(pixels.min()) + 1.0)
        return Image.fromarray(((pixels - low) * (255.0 / (high - low))).round().astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def get_transform(img_size: Sequence[int], augment: bool = False, rotation: int = 0, mean: Stat = 0.5,
                  std: Stat = 0.5) -> T.Compose:
    """RGB → [RandAugment] → [rotation, counter-clockwise with expand] → bicubic resize straight to
    `img_size` (h, w) → tensor in [0, 1] → normalisation."""
    transforms: List[Callable] = [to_rgb]
    if augment:
        transforms.append(rand_augment_transform())
    if rotation:
        transforms.append(partial(Image.Image.rotate, angle=rotation, expand=True))
    transforms += [T.Resize(tuple(img_size), T.InterpolationMode.BICUBIC), ToNormalizedTensor(mean, std)]
    return T.Compose(transforms)
