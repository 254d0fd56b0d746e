"""Activation checkpointing: a block's activations are recomputed in the backward pass instead of kept."""
from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint


def maybe_checkpoint(enabled: bool, function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)`; when `enabled` and autograd records, its activations are not kept but recomputed in the
    backward pass (PyTorch's non-reentrant checkpoint: the same values and gradients, random numbers included)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)
