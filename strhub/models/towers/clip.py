"""CLIP's own text tower (OpenAI layout, English BPE, causal), the cross-modal branch's default."""
from typing import List, Tuple

import regex
import torch
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from torch import Tensor, nn

from strhub.models.clip_blocks import encode_text_tokens
from strhub.models.towers.base import TextTower


class CaptionTokenizer(SimpleTokenizer):
    """open_clip's CLIP BPE tokenizer, pre-tokenising like OpenAI's: its special strings are
    `<|startoftext|>` / `<|endoftext|>`, which a caption made with a punctuation charset may hold."""

    def __init__(self, context_length: int) -> None:
        super().__init__(context_length=context_length)
        self.pat = regex.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
                                 r"[^\s\p{L}\p{N}]+", regex.IGNORECASE)
        self.cache = {"<|startoftext|>": "<start_of_text>", "<|endoftext|>": "<end_of_text>"}


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
