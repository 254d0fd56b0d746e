"""The adapters of STR-Adapter, the paper's "CLIP + adapter" baseline: modules between a frozen CLIP
image encoder and the decoder. Each takes the CLIP image tokens (N, M, D) and the inputs of the
vision blocks listed in its `block_ids` (empty but for the ladder adapters), which the encoder
hands over as it runs: no hooks are left on CLIP.

Key names follow the original's checkpoints (`adapter.*`).
"""
import copy
from typing import Callable, Dict, List, Sequence

import torch
from open_clip.model import CLIP
from open_clip.transformer import LayerNorm, QuickGELU, ResidualAttentionBlock
from torch import Tensor, nn

from strhub.models.clip_blocks import ClipBlock, RunsResidualBlock
from strhub.models.decoder_layers import init_decoder_weights


class Adapter(nn.Module):
    """An adapter: `forward(memory, block_inputs)` maps CLIP's image tokens onto the decoder's memory. With
    `grad_checkpointing`, its attention blocks are recomputed in the backward pass."""

    block_ids: List[int] = []
    grad_checkpointing = False

    def forward(self, memory: Tensor, block_inputs: List[Tensor]) -> Tensor:
        raise NotImplementedError


class IdentityAdapter(Adapter):
    """No adapter: the decoder reads CLIP's tokens."""

    def forward(self, memory: Tensor, block_inputs: List[Tensor]) -> Tensor:
        return memory


class Bottleneck(Adapter):
    """CLIP-Adapter's residual bottleneck, `ratio * relu(W2 relu(W1 x)) + (1 - ratio) * x` without
    biases: the `linear` adapter (half width, ratio 0.2) and the side blocks of `linear_ladder`."""

    def __init__(self, width: int, reduction: int, ratio: float) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(width, width // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(width // reduction, width, bias=False), nn.ReLU(inplace=True))
        self.ratio = ratio
        init_decoder_weights(self)

    def forward(self, memory: Tensor, block_inputs: Sequence[Tensor] = ()) -> Tensor:
        return self.ratio * self.fc(memory) + (1.0 - self.ratio) * memory


class AttentionAdapter(Adapter):
    """`adapter_type=attention`: a CLIP residual attention block mixing in at 0.5."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.attn = ClipBlock(width, num_heads, act_layer=QuickGELU, norm_layer=LayerNorm)
        init_decoder_weights(self)

    def forward(self, memory: Tensor, block_inputs: List[Tensor]) -> Tensor:
        return 0.5 * self.attn(memory, checkpoint=self.grad_checkpointing) + 0.5 * memory


class PrunedAttention(nn.Module):
    """Multi-head self-attention whose queries, keys and values are `reduction` times narrower than
    its input; the output projection maps back to the input width."""

    def __init__(self, width: int, num_heads: int, reduction: int) -> None:
        super().__init__()
        self.embed_dim = width
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width // reduction, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width // reduction))
        self.out_proj = nn.Linear(width // reduction, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)


class PrunedBlock(RunsResidualBlock):
    """A CLIP residual attention block with width-reduced internals (attention and MLP); the
    residual stream and the LayerNorms keep the full width."""

    def __init__(self, width: int, num_heads: int, reduction: int) -> None:
        super().__init__()
        self.attn = PrunedAttention(width, num_heads, reduction)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4 // reduction))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4 // reduction, width))
        self.ln_2 = LayerNorm(width)
        self.ls_1 = self.ls_2 = nn.Identity()


def _largest_rows(weight: Tensor, count: int) -> Tensor:
    """The `count` rows (entries, for a vector) of largest L1 norm, in their original order."""
    norms = weight.abs() if weight.ndim == 1 else weight.norm(p=1, dim=1)
    return weight[norms.topk(count).indices.sort().values]


def prune_block(block: ResidualAttentionBlock, reduction: int) -> PrunedBlock:
    """A `PrunedBlock` initialised from a CLIP block as the original does: of each of the query, key
    and value projections, of the MLP's hidden units and of the inputs of both output projections,
    the rows of largest L1 norm are kept (biases chosen on their own by absolute value)."""
    width, num_heads = block.attn.embed_dim, block.attn.num_heads
    pruned = PrunedBlock(width, num_heads, reduction)
    keep, hidden = int(width / reduction), int(4 * width / reduction)
    attn, mlp = block.attn, block.mlp
    weights = {
        "attn.in_proj_weight": torch.cat([_largest_rows(w, keep) for w in attn.in_proj_weight.chunk(3)]),
        "attn.in_proj_bias": torch.cat([_largest_rows(b, keep) for b in attn.in_proj_bias.chunk(3)]),
        "attn.out_proj.weight": _largest_rows(attn.out_proj.weight.t(), keep).t(),
        "attn.out_proj.bias": attn.out_proj.bias,
        "mlp.c_fc.weight": _largest_rows(mlp.c_fc.weight, hidden),
        "mlp.c_fc.bias": _largest_rows(mlp.c_fc.bias, hidden),
        "mlp.c_proj.weight": _largest_rows(mlp.c_proj.weight.t(), hidden).t(),
        "mlp.c_proj.bias": mlp.c_proj.bias,
        **{f"{norm}.{name}": getattr(getattr(block, norm), name) for norm in ("ln_1", "ln_2")
           for name in ("weight", "bias")},
    }
    with torch.no_grad():
        pruned.load_state_dict({key: value.detach().clone() for key, value in weights.items()})
    return pruned


class LadderAdapter(Adapter):
    """A ladder side network: side block i reads a gated mix of the input of CLIP vision block
    `block_ids[i]` and the previous side block's output; copies of CLIP's `ln_post` and projection
    follow, and the result is gated with CLIP's own tokens. Gates are sigmoid(alpha / 0.1), alpha
    starting at zero."""

    temperature = 0.1

    def __init__(self, side_blocks: Sequence[nn.Module], clip: CLIP, block_ids: Sequence[int]) -> None:
        super().__init__()
        self.block_ids = list(block_ids)
        self.alpha = nn.Parameter(torch.zeros(len(self.block_ids)))
        self.resblocks = nn.ModuleList(side_blocks)
        self.ln_post = copy.deepcopy(clip.visual.ln_post)
        self.proj = nn.Parameter(clip.visual.proj.detach().clone())

    def forward(self, memory: Tensor, block_inputs: List[Tensor]) -> Tensor:
        gates = torch.sigmoid(self.alpha / self.temperature)
        x = self._side(self.resblocks[0], block_inputs[0])
        for gate, side, block_input in zip(gates[1:], self.resblocks[1:], block_inputs[1:]):
            x = self._side(side, gate * block_input + (1.0 - gate) * x)
        x = self.ln_post(x) @ self.proj
        return gates[0] * memory + (1.0 - gates[0]) * x

    def _side(self, block: nn.Module, x: Tensor) -> Tensor:
        """A side block on (N, L, D) tokens: a bottleneck, or a (pruned) CLIP residual attention block."""
        return block(x) if isinstance(block, Bottleneck) else block(x, checkpoint=self.grad_checkpointing)


def _chosen_blocks(clip: CLIP, block_ids: Sequence[int]) -> List[ResidualAttentionBlock]:
    blocks = clip.visual.transformer.resblocks
    for i in block_ids:
        if not 0 <= i < len(blocks):
            raise ValueError(f"block_ids {list(block_ids)}: CLIP's vision tower has blocks 0..{len(blocks) - 1}")
    return [blocks[i] for i in block_ids]


AdapterBuilder = Callable[[CLIP, int, int, Sequence[int], int], Adapter]

ADAPTERS: Dict[str, AdapterBuilder] = {
    "identity": lambda clip, width, heads, block_ids, reduction: IdentityAdapter(),
    "linear": lambda clip, width, heads, block_ids, reduction: Bottleneck(width, reduction=2, ratio=0.2),
    "attention": lambda clip, width, heads, block_ids, reduction: AttentionAdapter(width, heads),
    "ladder": lambda clip, width, heads, block_ids, reduction: LadderAdapter(
        [copy.deepcopy(block) for block in _chosen_blocks(clip, block_ids)], clip, block_ids),
    "linear_ladder": lambda clip, width, heads, block_ids, reduction: LadderAdapter(
        [Bottleneck(clip.visual.transformer.width, reduction=4, ratio=0.5) for _ in _chosen_blocks(clip, block_ids)],
        clip, block_ids),
    "ladder_pruning": lambda clip, width, heads, block_ids, reduction: LadderAdapter(
        [prune_block(block, reduction) for block in _chosen_blocks(clip, block_ids)], clip, block_ids),
}
# Ladder adapters are trained at the encoder's learning rate, the others with the decoder.
ENCODER_RATE_ADAPTERS = ("ladder", "ladder_pruning")


def build_adapter(adapter_type: str, clip: CLIP, num_heads: int, block_ids: Sequence[int], reduction: int) -> Adapter:
    """The adapter `adapter_type` for the image tokens of `clip` (`num_heads` serves the attention
    adapter, `block_ids` and `reduction` the ladders)."""
    if adapter_type not in ADAPTERS:
        raise ValueError(f"unknown adapter_type {adapter_type!r}; known: {', '.join(ADAPTERS)}")
    width = clip.text_projection.shape[-1]
    return ADAPTERS[adapter_type](clip, width, num_heads, block_ids, reduction)
