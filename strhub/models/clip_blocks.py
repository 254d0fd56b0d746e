"""How CLIP4STR runs open_clip's towers: the residual blocks written out on contiguous batch-first tensors (faster than
`nn.MultiheadAttention` on a CPU), checkpointed on request; image features for all tokens after `ln_post`; text
features for every position of a short causal context, shared prefixes computed once."""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import QuickGELU, ResidualAttentionBlock
from torch import Tensor, nn

from strhub.models.recompute import maybe_checkpoint

QUICK_GELU_BAND_ROWS = 128  # 128 rows of a 3072-wide activation take 1.5 MiB: they stay in L2


def run_blocks_as_ours(*transformers: nn.Module) -> None:
    """Gives the open_clip transformers' blocks the class `ClipBlock` (a subclass without state of its own: the same
    weights and names), whose forward is `residual_block`."""
    for transformer in transformers:
        for block in transformer.resblocks:
            block.__class__ = ClipBlock


class Prefixes(NamedTuple):
    """How the text encoder's rows map onto its captions (see `shared_prefixes`): `first` (R,) picks the row of
    each distinct prefix from the caption positions, `groups` (N * L,) the prefix of each caption position."""

    first: Tensor
    groups: Tensor
    length: int


def residual_block(block: nn.Module, x: Tensor, attn_mask: Optional[Tensor] = None,
                   prefixes: Optional[Prefixes] = None) -> Tensor:
    """An open_clip residual attention block on batch-first tokens (N, L, D): the same computation as
    its own forward, written out on contiguous tensors (faster than `nn.MultiheadAttention` on a CPU).
    With `prefixes`, `x` holds the distinct caption prefixes (R, D): the projections and the MLP run on
    them, the attention itself on every caption."""
    attn = block.attn
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    if prefixes is not None:
        qkv = qkv[prefixes.groups].view(-1, prefixes.length, qkv.shape[-1])
    attended = attend(attn, qkv, attn_mask)
    if prefixes is not None:
        attended = attended.flatten(0, 1)[prefixes.first]
    x = x + block.ls_1(attn.out_proj(attended))
    return x + block.ls_2(mlp(block, block.ln_2(x)))


class RunsResidualBlock(nn.Module):
    """A block whose forward is `residual_block`, recomputed in the backward pass when told to checkpoint.
    The towers call their blocks, never their weights from outside, so that wrappers that work on a module's
    calls see every use of its parameters (FSDP gathers a sharded block's parameters around its forward)."""

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, *, prefixes: Optional[Prefixes] = None,
                checkpoint: bool = False) -> Tensor:
        return maybe_checkpoint(checkpoint, residual_block, self, x, attn_mask, prefixes)


class ClipBlock(RunsResidualBlock, ResidualAttentionBlock):
    """open_clip's residual attention block, run by `residual_block` (`build_clip` gives CLIP's blocks this
    class: it adds no state, so weights and names stay open_clip's)."""


def attend(attn: nn.MultiheadAttention, qkv: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
    """Multi-head attention of projected queries, keys and values (N, L, 3 * D), before the output
    projection: (N, L, D)."""
    q, k, v = qkv.unflatten(-1, (3, attn.num_heads, -1)).permute(2, 0, 3, 1, 4)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2).flatten(2)


def mlp(block: nn.Module, x: Tensor) -> Tensor:
    """The block's MLP. Its activation is QuickGELU in CLIP4STR's CLIP (only an open_clip image tower
    beside a Hugging Face text tower may have GELU): out of autograd, QuickGELU runs in place and, on a
    CPU, a band of rows at a time, so that each band stays in cache: the same numbers, about 5 % less
    image-encoder time at batch 8 (not in an ONNX export, whose graph would keep the bands of the example
    batch)."""
    hidden = block.mlp.c_fc(x)
    if hidden.requires_grad or torch.onnx.is_in_onnx_export() or not isinstance(block.mlp.gelu, QuickGELU):
        return block.mlp.c_proj(block.mlp.gelu(hidden))
    rows = hidden.view(-1, hidden.shape[-1])
    band_rows = QUICK_GELU_BAND_ROWS if rows.device.type == "cpu" else len(rows)
    gate = rows.new_empty(min(band_rows, len(rows)), rows.shape[1])
    for band in rows.split(band_rows):
        band_gate = torch.mul(band, 1.702, out=gate[:len(band)]).sigmoid_()
        band.mul_(band_gate)
    return block.mlp.c_proj(hidden)


def vision_features(clip: CLIP, images: Tensor, capture: Sequence[int] = ()) -> Tuple[Tensor, List[Tensor]]:
    """All image tokens (CLS first) after `ln_post`, unprojected (N, 1 + grid, W), and the inputs of
    the vision blocks numbered in `capture`, in that order."""
    visual = clip.visual
    x = visual.conv1(images.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype))
    inputs = {}
    for i, block in enumerate(visual.transformer.resblocks):
        if i in capture:
            inputs[i] = x
        x = block(x, checkpoint=visual.transformer.grad_checkpointing)
    return visual.ln_post(x), [inputs[i] for i in capture]


def clip_token_grid(clip: CLIP) -> Tuple[int, Tuple[int, int]]:
    """CLIP's image tokens: the CLS token, then the patch grid (rows, columns)."""
    return 1, tuple(clip.visual.grid_size)


def encode_image_tokens(clip: CLIP, images: Tensor, projection: bool = True) -> Tensor:
    """All image tokens (CLS first) after `ln_post`, projected to the joint space unless told not
    to: (N, 1 + grid, D)."""
    x = vision_features(clip, images)[0]
    return x @ clip.visual.proj if projection else x


def shared_prefixes(token_ids: Tensor) -> Tuple[Tensor, Tensor]:
    """Groups the positions of token rows (N, L) by the tokens up to and including them. Returns the
    flat index (into N * L) of one position of each of the R groups, and the group of every
    position (N * L,), groups numbered in order of position. Best run on the host: it takes one
    `unique` per position."""
    rows, length = token_ids.shape
    groups = torch.empty(rows, length, dtype=torch.long, device=token_ids.device)
    previous = torch.zeros(rows, dtype=torch.long, device=token_ids.device)
    count = 0
    for position in range(length):
        keys = torch.stack([previous, token_ids[:, position].long()], dim=1)
        distinct, previous = torch.unique(keys, dim=0, return_inverse=True)
        groups[:, position] = previous + count
        count += len(distinct)
    groups = groups.flatten()
    flat = torch.arange(len(groups), device=groups.device)
    first = torch.full((count,), len(groups), dtype=torch.long, device=groups.device)
    return first.scatter_reduce_(0, groups, flat, "amin"), groups


def encode_text_tokens(clip: CLIP, token_ids: Tensor) -> Tensor:
    """Features of every position of a short causal context (N, L), best given on the host, projected:
    (N, L, D) on CLIP's device.

    Under the causal mask a position's features depend only on the tokens up to it, so positions
    that share them (a common start of two captions, or a caption given twice) are computed once:
    the blocks' projections and MLPs run on the distinct prefixes only, and only the attention itself on
    every caption. An ONNX export computes every position (the grouping depends on the tokens)."""
    batch, length = token_ids.shape
    device = clip.token_embedding.weight.device
    if torch.onnx.is_in_onnx_export():
        first = groups = torch.arange(batch * length, device=token_ids.device)
        tokens = token_ids.flatten()
    else:
        host_ids = token_ids.cpu()
        first, groups = shared_prefixes(host_ids)
        tokens = host_ids.flatten()[first].to(device)
        first, groups = first.to(device), groups.to(device)
    prefixes = Prefixes(first, groups, length)
    x = clip.token_embedding(tokens) + clip.positional_embedding[first % length]
    causal = torch.full((length, length), float("-inf"), dtype=x.dtype, device=x.device).triu(1)
    for block in clip.transformer.resblocks:
        x = block(x, causal, prefixes=prefixes, checkpoint=clip.transformer.grad_checkpointing)
    return (clip.ln_final(x) @ clip.text_projection)[groups].view(batch, length, -1)
