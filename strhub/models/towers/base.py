"""The interface of a CLIP text tower as CLIP4STR's cross-modal branch uses it."""
from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn


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
