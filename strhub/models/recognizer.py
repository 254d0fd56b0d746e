"""What the plain models of every family share: the character tokenizer, the test charset, the
decoding settings, and PARSeq's single-branch recognition (STR-Adapter and PARSeq differ only in
their encoder)."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from strhub.host import return_freed_memory
from strhub.models.decoder import CharDecoder, DecoderStack, greedy_decode, parallel_decode, refine
from strhub.models.decoder_layers import KeyValue, TokenEmbedding, cloze_mask, init_decoder_weights
from strhub.models.layout import lay_out_weights
from strhub.models.precision import cast_weights, weights_dtype
from strhub.tokenizer import CharsetAdapter, Tokenizer


class Recognizer(nn.Module):
    """Base of the plain models: `forward(images, max_length=None)` gives logits (N, L, C);
    `tokenizer.decode(logits.softmax(-1))` the strings. Without `max_length` (testing) greedy
    decoding stops once every sample of the batch has produced EOS."""

    def __init__(self, charset_train: str, charset_test: str, max_label_length: int, decode_ar: bool,
                 refine_iters: int) -> None:
        super().__init__()
        self.tokenizer = Tokenizer(charset_train)
        self.charset_adapter = CharsetAdapter(charset_test)
        self.max_label_length = max_label_length
        self.decode_ar = decode_ar
        self.refine_iters = refine_iters

    @property
    def image_size(self) -> Tuple[int, int]:
        """The input size (height, width)."""
        raise NotImplementedError

    @property
    def token_grid(self) -> Tuple[int, Tuple[int, int]]:
        """The image tokens of the decoders' memory: how many come before the patch grid (CLS), and the
        grid (rows, columns), in row-major order."""
        raise NotImplementedError

    def named_decoders(self) -> Dict[str, CharDecoder]:
        """The decoders by name, in the order the model runs them."""
        raise NotImplementedError

    def few_row_modules(self) -> Sequence[nn.Module]:
        """Modules whose weights multiply few rows at inference (see `strhub.models.layout`)."""
        return ()

    def blocks(self) -> List[nn.Module]:
        """The encoders' transformer blocks, each called as a module with all of its weights: the units
        that FSDP shards and that `set_grad_checkpointing(encoder=True)` recomputes."""
        raise NotImplementedError

    def set_grad_checkpointing(self, encoder: bool = True, decoder: bool = False) -> None:
        """Recomputes the trained encoder blocks (and, with `decoder`, the decoder layers) in the backward
        pass instead of keeping their activations: the same loss and gradients, less memory."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> "Recognizer":
        """Out of training, the weights of `few_row_modules` are stored input-major."""
        super().train(mode)
        if any([lay_out_weights(module, input_major=not mode) for module in self.few_row_modules()]):
            return_freed_memory()
        return self

    def cast_for_inference(self, dtype: torch.dtype = torch.bfloat16) -> "Recognizer":
        """Stores the weights in `dtype` for inference, once (see `strhub.models.precision`; autocast would cast
        them at every use); the images given to `forward` are cast to it. For inference only: training keeps
        float32 weights."""
        if weights_dtype(self) != dtype:
            cast_weights(self, dtype)
        return self

    def num_steps(self, max_length: Optional[int] = None) -> int:
        """Decoding steps: the longest label (at most `max_label_length`) plus EOS."""
        return (self.max_label_length if max_length is None else min(max_length, self.max_label_length)) + 1

    def bos(self, batch: int, device: torch.device) -> Tensor:
        return torch.full((batch, 1), self.tokenizer.bos_id, dtype=torch.long, device=device)

    def context_buffer(self, batch: int, num_steps: int, device: torch.device) -> Tensor:
        """The greedy context (N, S): BOS, then PAD until decoding writes its tokens."""
        tokens = torch.full((batch, num_steps), self.tokenizer.pad_id, dtype=torch.long, device=device)
        tokens[:, 0] = self.tokenizer.bos_id
        return tokens

    def first_pass(self, decoder: CharDecoder, memory_kv: List[KeyValue], tokens: Tensor, num_steps: int,
                   stop_early: bool) -> Tensor:
        """Greedy decoding into `tokens` (or, without `decode_ar`, all positions at once)."""
        if self.decode_ar:
            return greedy_decode(decoder, memory_kv, tokens, num_steps, self.tokenizer.eos_id if stop_early else None)
        return parallel_decode(decoder, memory_kv, tokens[:, :1], num_steps)

    def refine(self, decoder: CharDecoder, memory_kv: List[KeyValue], logits: Tensor, mask: Tensor) -> Tensor:
        return refine(decoder, memory_kv, logits, self.bos(len(logits), logits.device), mask, self.tokenizer.eos_id)


class PARSeqRecognizer(Recognizer, CharDecoder):
    """PARSeq's layout and decoding over the memory of `encode`: the layers and final norm in
    `decoder`, the head, token embedding and position queries beside it. Subclasses register their
    encoder, then call `add_decoder`, so that the state dict keeps the original's order."""

    def add_decoder(self, embed_dim: int, dec_num_heads: int, dec_mlp_ratio: int, dec_depth: int,
                    dropout: float) -> None:
        self.decoder = DecoderStack(embed_dim, dec_num_heads, dec_mlp_ratio, dec_depth, dropout)
        self.head = nn.Linear(embed_dim, len(self.tokenizer) - 2)
        self.text_embed = TokenEmbedding(len(self.tokenizer), embed_dim)
        self.pos_queries = nn.Parameter(torch.empty(1, self.max_label_length + 1, embed_dim))
        self.dropout = nn.Dropout(dropout)
        for module in (self.decoder, self.head, self.text_embed):
            init_decoder_weights(module)
        nn.init.trunc_normal_(self.pos_queries, std=0.02)

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def norm(self) -> nn.LayerNorm:
        return self.decoder.norm

    def few_row_modules(self) -> Sequence[nn.Module]:
        return (self.decoder, self.head)

    def set_grad_checkpointing(self, encoder: bool = True, decoder: bool = False) -> None:
        self.set_encoder_checkpointing(encoder)
        self.grad_checkpointing = decoder

    def set_encoder_checkpointing(self, enable: bool) -> None:
        raise NotImplementedError

    def named_decoders(self) -> Dict[str, CharDecoder]:
        return {"decoder": self}

    def encode(self, images: Tensor) -> Tensor:
        """The decoder's memory (N, M, D)."""
        raise NotImplementedError

    def forward(self, images: Tensor, max_length: Optional[int] = None) -> Tensor:
        num_steps = self.num_steps(max_length)
        memory_kv = self.memory_kv(self.encode(images))
        tokens = self.context_buffer(len(images), num_steps, images.device)
        logits = self.first_pass(self, memory_kv, tokens, num_steps, stop_early=max_length is None)
        mask = cloze_mask(num_steps, images.device)
        for _ in range(self.refine_iters):
            logits = self.refine(self, memory_kv, logits, mask)
        return logits
