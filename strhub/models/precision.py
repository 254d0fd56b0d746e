"""Inference in bfloat16 with the weights cast once.

Autocast casts a weight at every use: greedy decoding multiplies each decoder weight by a few rows at every
step, so that at batch 1 the casts cost more than the products save. `cast_weights` stores the weights in
bfloat16 once instead; what must stay exact stays in float32: the layer norms' weights (their statistics are
computed in float32 whatever the input), and the heads, whose input is cast back to float32 so that the logits,
their softmax and their argmax are float32's. The images are cast on their way into the model.
"""
from typing import Any, Iterator, Tuple

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def kept_in_float32(model: nn.Module) -> Iterator[nn.Module]:
    """The modules whose weights stay float32: layer norms and the decoders' heads."""
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) or (isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] == "head"):
            yield module


def cast_weights(model: nn.Module, dtype: torch.dtype) -> RemovableHandle:
    """Stores the floating-point parameters and buffers of `model` in `dtype`, but those of `kept_in_float32`,
    keeping each tensor's layout (`strhub.models.layout`), and has the model's first argument (the images) cast
    to `dtype`. Returns the handle of that cast (`remove()` it when casting back to float32)."""
    kept = {id(tensor) for module in kept_in_float32(model) for tensor in module.parameters(recurse=False)}
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point() and id(tensor) not in kept:
            tensor.data = tensor.data.to(dtype)
    return model.register_forward_pre_hook(_cast_input(dtype))


def _cast_input(dtype: torch.dtype) -> Any:
    def hook(module: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
        if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            return (args[0].to(dtype), *args[1:])
        return args
    return hook


def weights_dtype(model: nn.Module) -> torch.dtype:
    """The dtype most of the model's parameters are stored in."""
    counts = {}
    for param in model.parameters():
        counts[param.dtype] = counts.get(param.dtype, 0) + param.numel()
    return max(counts, key=counts.get) if counts else torch.float32
