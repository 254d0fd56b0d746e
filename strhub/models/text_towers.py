"""The text towers of CLIP4STR's cross-modal branch, behind one small interface.

The branch encodes the visual branch's prediction (a caption) with CLIP's text tower and reads every
token position of the result. The tower is CLIP's own (OpenAI layout, English BPE, causal: the default,
as the original) or, for other languages, a Hugging Face model beside open_clip's image tower
(`strhub.models.hf_tower`, chosen with `model.text_tower`). Either gives the joint width, the blocks
that `text_freeze_nlayer` counts, the caption tokenizer, and the features of every token position.
"""
from abc import ABC, abstractmethod
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from open_clip.model import CLIP
from torch import Tensor, nn

from strhub.models.clip import CaptionTokenizer, ClipArch, create_clip, encode_text_tokens, is_hf_arch


class TextTower(ABC):
    """A CLIP text tower as the cross-modal branch uses it. It is not a module: the weights stay in the
    CLIP model `clip` (and in its state-dict layout)."""

    caption_tokenizer: Any  # what `tokenize` uses

    def __init__(self, clip: nn.Module, context_length: int) -> None:
        self.clip = clip
        self.context_length = context_length

    @property
    @abstractmethod
    def embed_dim(self) -> int:
        """The joint width of image and text features."""

    @property
    @abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, in order (`text_freeze_nlayer` freezes those below it)."""

    @property
    @abstractmethod
    def module(self) -> nn.Module:
        """The module that holds the blocks (its weights are laid out for few rows out of training)."""

    @abstractmethod
    def tokenize(self, captions: List[str], device: torch.device) -> Tensor:
        """Token ids (N, context_length), padded and truncated."""

    @abstractmethod
    def token_labels(self, captions: List[str]) -> List[Tuple[str, ...]]:
        """Per caption, the text of each of its `context_length` token positions (empty for the padding)."""

    @abstractmethod
    def token_features(self, token_ids: Tensor) -> Tensor:
        """Features of every token position, projected to the joint width: (N, L, D)."""

    @abstractmethod
    def pooled_features(self, token_ids: Tensor) -> Tensor:
        """The tower's one feature per caption, projected: (N, 1, D)."""

    @abstractmethod
    def token_embeddings(self, token_ids: Tensor) -> Tensor:
        """The input token embeddings, at the joint width: (N, L, D)."""

    @abstractmethod
    def embeddings(self) -> List[nn.Module]:
        """The modules before the blocks, frozen with any of them."""

    @abstractmethod
    def head(self) -> List[nn.Module]:
        """The modules after the blocks, frozen with all of them."""

    def settings(self) -> Optional[Dict[str, Any]]:
        """What the hyper-parameters keep to rebuild the tower (`model.text_tower`)."""
        return None

    def freeze(self, num_blocks: int) -> Tuple[List[nn.Module], bool]:
        """Freezes the embeddings, `logit_scale` and the blocks below `num_blocks` (-1: nothing); the head
        keeps training unless every block is frozen. Returns the frozen modules (to keep in eval mode while
        training) and whether the whole tower is frozen."""
        if num_blocks < 0:
            return [], False
        frozen = [*self.embeddings(), *self.blocks[:num_blocks]]
        everything = num_blocks >= len(self.blocks)
        if everything:
            frozen += self.head()
        for module in frozen:
            module.requires_grad_(False)
        self.clip.logit_scale.requires_grad_(False)
        return frozen, everything


class CLIPTextTower(TextTower):
    """CLIP's own text tower (OpenAI layout): BPE captions of `context_length` tokens (SOT ... EOT), encoded
    under the causal mask; the pooled feature is that of EOT."""

    clip: CLIP

    def __init__(self, clip: CLIP, context_length: int) -> None:
        super().__init__(clip, context_length)
        self.caption_tokenizer = CaptionTokenizer(context_length)

    @property
    def embed_dim(self) -> int:
        return self.clip.text_projection.shape[-1]

    @property
    def blocks(self) -> nn.ModuleList:
        return self.clip.transformer.resblocks

    @property
    def module(self) -> nn.Module:
        return self.clip.transformer

    def tokenize(self, captions: List[str], device: torch.device) -> Tensor:
        return self.caption_tokenizer(captions, self.context_length).to(device)

    def token_labels(self, captions: List[str]) -> List[Tuple[str, ...]]:
        """BPE tokens without their end-of-word marks, between `<start>` and `<end>`."""
        tokenizer = self.caption_tokenizer
        special = {tokenizer.sot_token_id: "<start>", tokenizer.eot_token_id: "<end>"}
        labels = []
        for row in tokenizer(captions, self.context_length).tolist():
            end = row.index(tokenizer.eot_token_id) if tokenizer.eot_token_id in row else len(row) - 1
            labels.append(tuple(special.get(i, tokenizer.decoder[i].replace("</w>", "")) if k <= end else ""
                                for k, i in enumerate(row)))
        return labels

    def token_features(self, token_ids: Tensor) -> Tensor:
        return encode_text_tokens(self.clip, token_ids)

    def pooled_features(self, token_ids: Tensor) -> Tensor:
        features = self.token_features(token_ids)
        return features[torch.arange(features.shape[0]), token_ids.argmax(-1)].unsqueeze(1)

    def token_embeddings(self, token_ids: Tensor) -> Tensor:
        return self.clip.token_embedding(token_ids)

    def embeddings(self) -> List[nn.Module]:
        return [self.clip.token_embedding]

    def head(self) -> List[nn.Module]:
        return [self.clip.ln_final]

    def freeze(self, num_blocks: int) -> Tuple[List[nn.Module], bool]:
        """As the original: the positional embedding with the token embedding, `text_projection` with the head."""
        frozen, everything = super().freeze(num_blocks)
        if num_blocks >= 0:
            self.clip.positional_embedding.requires_grad_(False)
        if everything:
            self.clip.text_projection.requires_grad_(False)
        return frozen, everything


def create_text_tower(clip_pretrained: Optional[str], clip_arch: Union[str, ClipArch, None],
                      image_size: Optional[Sequence[int]], text_tower: Optional[Mapping[str, Any]],
                      context_length: int) -> Tuple[TextTower, ClipArch]:
    """The CLIP of `clip_pretrained` / `clip_arch` (see `strhub.models.clip.create_clip`) behind its text
    tower, and its architecture. With `text_tower` set, the text tower is a Hugging Face model
    (`strhub.models.hf_tower`, imported only then)."""
    if text_tower:
        from strhub.models.hf_tower import create_hf_tower

        return create_hf_tower(clip_pretrained, clip_arch, image_size, text_tower, context_length)
    if is_hf_arch(clip_arch):
        name = repr(clip_arch) if isinstance(clip_arch, str) else "(with text_cfg.hf_proj_type)"
        raise ValueError(f"model.clip_arch {name} has a Hugging Face text tower: set model.text_tower "
                         f"(hf_path: a local folder with its config and tokenizer, save_pretrained layout)")
    clip, arch = create_clip(clip_pretrained, clip_arch, image_size)
    return CLIPTextTower(clip, context_length), arch
