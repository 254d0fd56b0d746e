"""CLIP4STR as a plain `nn.Module`: CLIP image encoder, visual decoder, and the cross-modal decoder
that reads the image together with the CLIP text encoding of the visual branch's prediction."""
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from strhub.models.clip import arguments_from, clip_settings
from strhub.models.clip_blocks import clip_token_grid, encode_image_tokens
from strhub.models.decoder import Decoder
from strhub.models.decoder_layers import KeyValue, cloze_mask
from strhub.models.recognizer import Recognizer
from strhub.models.state_dicts import count_blocks, sub_state_dict
from strhub.models.towers import TextTower, create_text_tower


class CLIP4STR(Recognizer):
    """The model; attribute names follow the original's state-dict layout
    (`clip_model.*`, `visual_decoder.*`, `cross_decoder.*`). The CLIP model is that of `text_tower`, the
    text tower of the cross branch (CLIP's own, or a Hugging Face one: `strhub.models.towers`)."""

    def __init__(self, text_tower: TextTower, charset_train: str, charset_test: str, max_label_length: int,
                 dec_num_heads: int, dec_mlp_ratio: int, dec_depth: int, dropout: float,
                 decode_ar: bool, refine_iters: int, use_language_model: bool, image_detach: bool,
                 use_share_dim: bool, clip_cls_eot_feature: bool, cross_token_embeding: bool,
                 image_freeze_nlayer: int, text_freeze_nlayer: int) -> None:
        super().__init__(charset_train, charset_test, max_label_length, decode_ar, refine_iters)
        self.text_tower = text_tower
        self.context_length = text_tower.context_length
        self.use_language_model = use_language_model
        self.image_detach = image_detach
        self.use_share_dim = use_share_dim
        self.clip_cls_eot_feature = clip_cls_eot_feature
        self.cross_token_embeding = cross_token_embeding

        self.clip_model = clip_model = text_tower.clip
        self.image_encoder = encode_image_tokens
        embed_dim = text_tower.embed_dim
        visual_dim = embed_dim if use_share_dim else clip_model.visual.proj.shape[0]
        decoder_args = dict(num_heads=dec_num_heads, mlp_ratio=dec_mlp_ratio, depth=dec_depth, dropout=dropout,
                            num_classes=len(self.tokenizer) - 2, charset_size=len(self.tokenizer),
                            num_queries=max_label_length + 1)
        self.visual_decoder = Decoder(visual_dim, **decoder_args)
        self.cross_decoder = Decoder(embed_dim, **decoder_args) if use_language_model else None
        self.image_frozen_blocks, self.image_frozen = self._freeze_image_tower(image_freeze_nlayer)
        self.text_frozen_modules, self.text_frozen = text_tower.freeze(text_freeze_nlayer)

    def _freeze_image_tower(self, num_blocks: int) -> Tuple[int, bool]:
        """Freezes the vision blocks below `num_blocks` with the class and positional embeddings;
        the patch embedding, `ln_pre`, `ln_post` and the projection keep training. Every block
        frozen freezes the whole tower."""
        visual = self.clip_model.visual
        depth = len(visual.transformer.resblocks)
        if num_blocks < 0:
            return 0, False
        if num_blocks >= depth:
            visual.requires_grad_(False)
            return depth, True
        visual.class_embedding.requires_grad_(False)
        visual.positional_embedding.requires_grad_(False)
        for block in visual.transformer.resblocks[:num_blocks]:
            block.requires_grad_(False)
        return num_blocks, False

    @property
    def caption_tokenizer(self) -> Any:
        """The text tower's caption tokenizer (CLIP's BPE `CaptionTokenizer`, or a `tokenizers.Tokenizer`)."""
        return self.text_tower.caption_tokenizer

    @property
    def image_size(self) -> Tuple[int, int]:
        """The input size (height, width)."""
        return tuple(self.clip_model.visual.image_size)

    @property
    def token_grid(self) -> Tuple[int, Tuple[int, int]]:
        """CLS, then the patch grid; the CLS token alone with `clip_cls_eot_feature`. The cross decoder's
        memory holds the caption's tokens after these."""
        return (1, (0, 0)) if self.clip_cls_eot_feature else clip_token_grid(self.clip_model)

    def named_decoders(self) -> Dict[str, Decoder]:
        """The visual decoder, then the cross-modal one (whose memory is [image tokens ; caption tokens])."""
        decoders = {"visual": self.visual_decoder}
        if self.cross_decoder is not None:
            decoders["cross"] = self.cross_decoder
        return decoders

    def compile_image_encoder(self, **options: Any) -> None:
        """Runs the image encoder through `torch.compile` (same numbers, fused kernels)."""
        self.image_encoder = torch.compile(encode_image_tokens, **options)

    def few_row_modules(self) -> Sequence[nn.Module]:
        return [module for module in (self.text_tower.module, self.visual_decoder, self.cross_decoder)
                if module is not None]

    def decoders(self) -> List[Decoder]:
        return [decoder for decoder in (self.visual_decoder, self.cross_decoder) if decoder is not None]

    def blocks(self) -> List[nn.Module]:
        return [*self.clip_model.visual.transformer.resblocks, *self.text_tower.blocks]

    def set_grad_checkpointing(self, encoder: bool = True, decoder: bool = False) -> None:
        """Both CLIP towers' blocks (open_clip's `set_grad_checkpointing`, which our towers honour) and the two
        decoders' layers."""
        self.clip_model.set_grad_checkpointing(encoder)
        for module in self.decoders():
            module.grad_checkpointing = decoder

    def train(self, mode: bool = True) -> "CLIP4STR":
        """Frozen CLIP blocks stay in eval mode."""
        super().train(mode)
        if mode:
            for block in self.clip_model.visual.transformer.resblocks[:self.image_frozen_blocks]:
                block.eval()
            for module in self.text_frozen_modules:
                module.eval()
        return self

    def encode(self, images: Tensor) -> Tensor:
        """The visual decoder's memory: CLIP image tokens after `ln_post` (N, M, D), projected to the
        joint space when the decoders share its width, the CLS token alone if so configured."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.image_frozen):
            tokens = self.image_encoder(self.clip_model, images, self.use_share_dim)
        return tokens[:, :1] if self.clip_cls_eot_feature else tokens

    def cross_image_kv(self, image_memory: Tensor) -> List[KeyValue]:
        """The cross decoder's keys and values of the image part of its memory."""
        image = image_memory.detach() if self.image_detach else image_memory
        if not self.use_share_dim:
            image = image @ self.clip_model.visual.proj
        return self.cross_decoder.memory_kv(image)

    def caption_kv(self, visual_ids: List[Tensor]) -> List[List[KeyValue]]:
        """For each tensor of visual predictions (N, L) (the argmax classes of visual logits), the cross decoder's
        keys and values of the text part of its memory: the CLIP encoding of their captions. The captions of all
        the tensors are encoded together."""
        if visual_ids[0].is_meta:
            features = self.encode_caption_ids(self.planning_caption_ids(visual_ids))
        else:
            captions = [caption for ids in visual_ids for caption in self.captions(ids)]
            features = self.encode_captions(captions, visual_ids[0].device)
        text_kv = self.cross_decoder.memory_kv(features)
        sizes = [len(ids) for ids in visual_ids]
        parts = [list(zip(key.split(sizes), value.split(sizes))) for key, value in text_kv]
        return [[layer[i] for layer in parts] for i in range(len(sizes))]

    def captions(self, visual_ids: Tensor) -> List[str]:
        """The captions of visual predictions (N, L), as the original reads them off the visual logits (their
        argmax classes), through the test charset."""
        return self.tokenizer.captions(visual_ids, self.charset_adapter)

    def planning_caption_ids(self, visual_ids: List[Tensor]) -> Tensor:
        """For predictions without values (the meta device, on which training memory is planned): CLIP token ids, on the
        host, of captions that fill the context and share no prefix, the most memory the text encoder can take."""
        count = sum(len(ids) for ids in visual_ids)
        token_ids = torch.arange(1, count + 1).unsqueeze(1).expand(-1, self.context_length).clone()
        token_ids[:, 0], token_ids[:, -1] = self.caption_tokenizer.sot_token_id, self.caption_tokenizer.eot_token_id
        return token_ids

    def encode_captions(self, captions: List[str], device: torch.device) -> Tensor:
        """Text features of the captions: those of every token position (N, context_length, D), the tower's
        pooled one alone (N, 1, D) if so configured, or the raw token embeddings."""
        return self.encode_caption_ids(self.text_tower.tokenize(captions, device))

    def encode_caption_ids(self, token_ids: Tensor) -> Tensor:
        """Text features (see `encode_captions`) of captions as the text tower's token ids (N, context_length)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.text_frozen):
            if self.cross_token_embeding:
                return self.text_tower.token_embeddings(token_ids)
            if self.clip_cls_eot_feature:
                return self.text_tower.pooled_features(token_ids)
            return self.text_tower.token_features(token_ids)

    @staticmethod
    def join_kv(image_kv: List[KeyValue], text_kv: List[KeyValue]) -> List[KeyValue]:
        """Keys and values of the memory `[image ; text]` from those of its parts."""
        return [(torch.cat([ik, tk], dim=2), torch.cat([iv, tv], dim=2))
                for (ik, iv), (tk, tv) in zip(image_kv, text_kv)]

    def forward(self, images: Tensor, max_length: Optional[int] = None) -> Tensor:
        """Logits (N, L, C) of the final branch."""
        num_steps = self.num_steps(max_length)
        memory = self.encode(images)
        visual_kv = self.visual_decoder.memory_kv(memory)
        tokens = self.context_buffer(len(images), num_steps, images.device)
        logits = self.first_pass(self.visual_decoder, visual_kv, tokens, num_steps, stop_early=max_length is None)

        # The visual branch never reads the cross branch, so all its refinement passes come first and
        # the captions of every pass are encoded together.
        mask = cloze_mask(num_steps, images.device)
        visual_passes = [logits]
        for _ in range(self.refine_iters):
            visual_passes.append(self.refine(self.visual_decoder, visual_kv, visual_passes[-1], mask))
        if not self.use_language_model:
            return visual_passes[-1]

        image_kv = self.cross_image_kv(memory)
        text_kvs = self.caption_kv([passed.max(-1).indices for passed in visual_passes])
        cross_kvs = [self.join_kv(image_kv, text_kv) for text_kv in text_kvs]
        # The cross branch decodes as many steps as the visual one did, without stopping early.
        cross_logits = self.first_pass(self.cross_decoder, cross_kvs[0], tokens,
                                       logits.shape[1] if self.decode_ar else num_steps, stop_early=False)
        for cross_kv in cross_kvs[1:]:
            cross_logits = self.refine(self.cross_decoder, cross_kv, cross_logits, mask)
        return cross_logits


def build_model(config: Mapping[str, Any]) -> CLIP4STR:
    """CLIP4STR from a model config (`configs/model/*.yaml` or a checkpoint's hyper-parameters), with
    the CLIP weights that `clip_pretrained` names, or random ones built from `clip_arch`, and the text tower
    of `text_tower`."""
    text_tower, _ = create_text_tower(config.get("clip_pretrained"), config.get("clip_arch"), config.get("img_size"),
                                      config.get("text_tower"), config["context_length"])
    return CLIP4STR(text_tower, **arguments_from(CLIP4STR, config))


def settings_from_state_dict(state_dict: Mapping[str, Tensor], img_size: Optional[Sequence[int]]) -> Dict[str, Any]:
    """The architecture read off the tensors of a CLIP4STR state dict (`img_size` is needed only for a
    non-square input; the decoders' head count cannot be read)."""
    decoder = sub_state_dict(state_dict, "visual_decoder.")
    width = decoder["pos_queries"].shape[-1]
    return {
        **clip_settings(state_dict, img_size),
        "max_label_length": decoder["pos_queries"].shape[1] - 1,
        "dec_depth": count_blocks(decoder, "layers."),
        "dec_mlp_ratio": decoder["layers.0.linear1.weight"].shape[0] // width,
        "use_language_model": "cross_decoder.head.weight" in state_dict,
        "use_share_dim": width == state_dict["clip_model.visual.proj"].shape[1],
    }
