"""PARSeq as a plain `nn.Module`: a ViT encoder (timm's, without class token) and PARSeq's decoder.
Attribute names follow the original checkpoints (`encoder.*`, `decoder.*`, `head.*`, `text_embed.*`,
`pos_queries`; CLIP4STR's PARSeq-B adds `proj.*`), so baudm/parseq's released weights load as they are."""
import inspect
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from strhub.models.decoder_layers import init_decoder_weights
from strhub.models.recognizer import PARSeqRecognizer
from strhub.models.state_dicts import count_blocks

DECODER_MAX_WIDTH = 512  # wider encoders are projected down to it (CLIP4STR's PARSeq-B)


class PARSeq(PARSeqRecognizer):
    """ViT patch tokens after the final norm (projected to 512 when wider), read by PARSeq's decoder."""

    def __init__(self, charset_train: str, charset_test: str, max_label_length: int, img_size: Sequence[int],
                 patch_size: Sequence[int], embed_dim: int, enc_num_heads: int, enc_mlp_ratio: float, enc_depth: int,
                 dec_num_heads: int, dec_mlp_ratio: int, dec_depth: int, dropout: float, decode_ar: bool,
                 refine_iters: int) -> None:
        super().__init__(charset_train, charset_test, max_label_length, decode_ar, refine_iters)
        self.encoder = VisionTransformer(tuple(img_size), tuple(patch_size), embed_dim=embed_dim, depth=enc_depth,
                                         num_heads=enc_num_heads, mlp_ratio=enc_mlp_ratio, qkv_bias=True,
                                         num_classes=0, global_pool="", class_token=False)
        if embed_dim > DECODER_MAX_WIDTH:
            self.proj = nn.Linear(embed_dim, DECODER_MAX_WIDTH)
            init_decoder_weights(self.proj)
        else:
            self.proj = nn.Identity()
        self.add_decoder(min(embed_dim, DECODER_MAX_WIDTH), dec_num_heads, dec_mlp_ratio, dec_depth, dropout)

    @property
    def image_size(self) -> Tuple[int, int]:
        return tuple(self.encoder.patch_embed.img_size)

    @property
    def token_grid(self) -> Tuple[int, Tuple[int, int]]:
        return self.encoder.num_prefix_tokens, tuple(self.encoder.patch_embed.grid_size)

    def encode(self, images: Tensor) -> Tensor:
        return self.proj(self.encoder.forward_features(images))

    def blocks(self) -> List[nn.Module]:
        return list(self.encoder.blocks)

    def set_encoder_checkpointing(self, enable: bool) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> Set[str]:
        """Parameters that timm's optimizer factory leaves without weight decay (besides 1-D ones)."""
        return {"text_embed.embedding.weight", "pos_queries", *(f"encoder.{n}" for n in self.encoder.no_weight_decay())}


def build_model(config: Mapping[str, Any]) -> PARSeq:
    """PARSeq from a model config (`configs/model/parseq.yaml` or a checkpoint's hyper-parameters)."""
    names = list(inspect.signature(PARSeq).parameters)
    return PARSeq(**{name: config[name] for name in names})


def settings_from_state_dict(state_dict: Mapping[str, Tensor], img_size: Optional[Sequence[int]]) -> Dict[str, Any]:
    """The architecture read off the tensors of a PARSeq state dict. The head counts cannot be read, nor
    the image size beyond its number of patches (`img_size` is kept when it fits)."""
    patch_weight = state_dict["encoder.patch_embed.proj.weight"]
    embed_dim, patch_size = patch_weight.shape[0], list(patch_weight.shape[2:])
    mlp_ratio = state_dict["encoder.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    width = state_dict["pos_queries"].shape[-1]
    settings = {
        "embed_dim": embed_dim,
        "patch_size": patch_size,
        "enc_depth": count_blocks(state_dict, "encoder.blocks."),
        "enc_mlp_ratio": int(mlp_ratio) if mlp_ratio.is_integer() else mlp_ratio,
        "max_label_length": state_dict["pos_queries"].shape[1] - 1,
        "dec_depth": count_blocks(state_dict, "decoder.layers."),
        "dec_mlp_ratio": state_dict["decoder.layers.0.linear1.weight"].shape[0] // width,
    }
    num_patches = state_dict["encoder.pos_embed"].shape[1]
    if img_size is not None and (img_size[0] // patch_size[0]) * (img_size[1] // patch_size[1]) == num_patches:
        settings["img_size"] = list(img_size)
    return settings
