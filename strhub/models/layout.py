"""Weight layouts for speed on a CPU.

BLAS multiplies few rows (greedy decoding, short captions) about 1.5x faster by a weight stored
input-major (transposed storage: same values, shapes and names), and no slower for many rows. Training
wants PyTorch's usual output-major layout, in which backward produces the gradients. Models switch
layouts with their mode.
"""
from torch import Tensor, nn


def lay_out_weights(module: nn.Module, input_major: bool) -> bool:
    """Stores the CPU weights of the linear layers and attention input projections in `module`
    input-major or output-major (sharded weights, FSDP's, keep theirs). Returns whether any weight moved."""
    moved = False
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            weight = sub.weight
        elif isinstance(sub, nn.MultiheadAttention):
            weight = sub.in_proj_weight
        else:
            continue
        if (weight.device.type == "cpu" and weight.dim() == 2 and type(weight.data) is Tensor
                and _is_input_major(weight) != input_major):
            weight.data = weight.data.t().contiguous().t() if input_major else weight.data.contiguous()
            moved = True
    return moved


def _is_input_major(weight: Tensor) -> bool:
    return weight.stride() == (1, weight.shape[0]) and not weight.is_contiguous()

