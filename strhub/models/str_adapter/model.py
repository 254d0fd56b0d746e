"""STR-Adapter as a plain `nn.Module`: a frozen CLIP image encoder, an adapter on its tokens and
PARSeq's decoder (the paper's "CLIP + adapter" baseline). Attribute names follow the original's
state-dict layout (`clip_model.*`, `adapter.*`, `decoder.*`, `head.*`, `text_embed.*`, `pos_queries`)."""
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from open_clip.model import CLIP
from torch import Tensor, nn

from strhub.models.clip import build_on_clip, clip_settings
from strhub.models.clip_blocks import RunsResidualBlock, clip_token_grid, vision_features
from strhub.models.recognizer import PARSeqRecognizer
from strhub.models.state_dicts import count_blocks
from strhub.models.str_adapter.adapters import build_adapter


class STRAdapter(PARSeqRecognizer):
    """CLIP's image tokens (after `ln_post` and the projection) through an adapter, read by PARSeq's
    decoder. CLIP is frozen: it is never trained, stays in eval mode and computes no gradients."""

    def __init__(self, clip_model: CLIP, charset_train: str, charset_test: str, max_label_length: int,
                 adapter_type: str, block_ids: Sequence[int], prune_reduction: int, dec_num_heads: int,
                 dec_mlp_ratio: int, dec_depth: int, dropout: float, decode_ar: bool, refine_iters: int) -> None:
        super().__init__(charset_train, charset_test, max_label_length, decode_ar, refine_iters)
        self.clip_model = clip_model.requires_grad_(False).eval()
        self.adapter = build_adapter(adapter_type, clip_model, dec_num_heads, block_ids, prune_reduction)
        self.adapter.requires_grad_(True)  # its copies of CLIP's parts train
        self.add_decoder(clip_model.text_projection.shape[-1], dec_num_heads, dec_mlp_ratio, dec_depth, dropout)

    @property
    def image_size(self) -> Tuple[int, int]:
        return tuple(self.clip_model.visual.image_size)

    @property
    def token_grid(self) -> Tuple[int, Tuple[int, int]]:
        return clip_token_grid(self.clip_model)

    def train(self, mode: bool = True) -> "STRAdapter":
        super().train(mode)
        self.clip_model.eval()
        return self

    def blocks(self) -> List[nn.Module]:
        """CLIP's blocks (frozen, but sharded all the same) and the adapter's attention blocks."""
        adapter_blocks = [module for module in self.adapter.modules() if isinstance(module, RunsResidualBlock)]
        return [*self.clip_model.visual.transformer.resblocks, *self.clip_model.transformer.resblocks, *adapter_blocks]

    def set_encoder_checkpointing(self, enable: bool) -> None:
        """The adapter's blocks: CLIP computes no gradients, so it keeps no activations."""
        self.adapter.grad_checkpointing = enable

    def encode(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            features, block_inputs = vision_features(self.clip_model, images, self.adapter.block_ids)
            memory = features @ self.clip_model.visual.proj
        return self.adapter(memory, block_inputs)


def build_model(config: Mapping[str, Any]) -> STRAdapter:
    """STR-Adapter from a model config, with the CLIP weights that `clip_pretrained` names, or random
    ones built from `clip_arch`."""
    return build_on_clip(STRAdapter, config)


def settings_from_state_dict(state_dict: Mapping[str, Tensor], img_size: Optional[Sequence[int]]) -> Dict[str, Any]:
    """The architecture read off the tensors of an STR-Adapter state dict. The decoder's head count and
    which CLIP blocks feed a ladder adapter cannot be read (only how many)."""
    width = state_dict["pos_queries"].shape[-1]
    settings = {
        **clip_settings(state_dict, img_size),
        "max_label_length": state_dict["pos_queries"].shape[1] - 1,
        "dec_depth": count_blocks(state_dict, "decoder.layers."),
        "dec_mlp_ratio": state_dict["decoder.layers.0.linear1.weight"].shape[0] // width,
        "adapter_type": adapter_type_of(state_dict),
    }
    if settings["adapter_type"] == "ladder_pruning":
        side_width = state_dict["adapter.resblocks.0.attn.in_proj_weight"].shape[1]
        settings["prune_reduction"] = 3 * side_width // state_dict["adapter.resblocks.0.attn.in_proj_weight"].shape[0]
    return settings


def adapter_type_of(state_dict: Mapping[str, Tensor]) -> str:
    """The adapter type, told by its tensors."""
    if "adapter.fc.0.weight" in state_dict:
        return "linear"
    if "adapter.attn.attn.in_proj_weight" in state_dict:
        return "attention"
    if "adapter.resblocks.0.fc.0.weight" in state_dict:
        return "linear_ladder"
    if "adapter.resblocks.0.attn.in_proj_weight" in state_dict:
        weight = state_dict["adapter.resblocks.0.attn.in_proj_weight"]
        return "ladder" if weight.shape[0] == 3 * weight.shape[1] else "ladder_pruning"
    return "identity"
