"""The front door's own functions (`strhub.read`, `strhub.list_experiments`)."""
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import torch
from PIL import Image

from strhub.config import experiments
from strhub.data.transforms import get_transform
from strhub.host import choose_precision, inference_precision
from strhub.models.recognizer import Recognizer

ImageLike = Union[str, Path, Image.Image]


def list_experiments() -> List[str]:
    """The experiment configs a model can be created from (`create_model(name)`, `train.py +experiment=name`)."""
    return experiments()


@torch.inference_mode()
def read(model: Recognizer, images: Sequence[ImageLike], precision: str = "32") -> Tuple[List[str], List[float]]:
    """The text in word images (files or PIL images) and each reading's confidence, read by a plain model
    (`load_model`) in one batch on the model's device, at `precision`: 32, bf16 (the model's weights are stored in
    bfloat16, once: it stays so), 16 (autocast), or auto (bf16 where the device multiplies bfloat16 natively, else
    32; it says which on stderr)."""
    transform = get_transform(model.image_size)
    tensors = []
    for image in images:
        if isinstance(image, Image.Image):
            tensors.append(transform(image))
        else:
            with Image.open(image) as opened:
                tensors.append(transform(opened))
    device = next(model.parameters()).device
    with inference_precision(model, device, choose_precision(precision, device)):
        logits = model.eval()(torch.stack(tensors).to(device))
    return model.tokenizer.read(logits.float().softmax(-1))
