"""The modules that are exported as ONNX graphs. Each calls the PyTorch model's own code; only what the
graphs exchange is flattened into named tensors.

For a model whose decoders are `D` (PARSeq and STR-Adapter: the model itself; CLIP4STR: the visual
decoder, and the cross decoder as `cross_`):

- `encoder`: images -> the first decoder's memory keys and values (`memory_key_i`, `memory_value_i`,
  one pair per layer) and, for CLIP4STR's cross branch, those of the image part of its memory
  (`image_key_i`, `image_value_i`);
- `step`: one greedy step (`CharDecoder.step`), the content cache of every position a fixed buffer
  that goes in and comes out (`cache_i` -> `next_cache_i`), so the runtime never re-runs the prefix;
- `parallel`: non-autoregressive decoding (models with `decode_ar` off);
- `refine`: one cloze refinement pass over the previous logits;
- `caption` (CLIP4STR): CLIP token ids of the captions -> the CLIP text encoder -> the cross decoder's
  keys and values of `[image ; text]`. The BPE tokenisation that makes the ids stays in Python.
"""
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

from strhub.models.clip4str.model import CLIP4STR
from strhub.models.decoder import CharDecoder, DecodeState, parallel_decode, refine
from strhub.models.decoder_layers import KeyValue, cloze_mask
from strhub.models.recognizer import PARSeqRecognizer, Recognizer


def kv_names(prefix: str, depth: int) -> List[str]:
    """`prefix_key_0, prefix_value_0, ...`: the names of a memory's keys and values, layer by layer."""
    return [f"{prefix}_{part}_{i}" for i in range(depth) for part in ("key", "value")]


def flatten(memory_kv: Sequence[KeyValue]) -> List[Tensor]:
    return [tensor for pair in memory_kv for tensor in pair]


def pairs(tensors: Sequence[Tensor]) -> List[KeyValue]:
    return [(tensors[i], tensors[i + 1]) for i in range(0, len(tensors), 2)]


def decoders(model: Recognizer) -> List[Tuple[str, CharDecoder]]:
    """The decoders of a model with the prefix of their graphs: `""` for the first, `"cross_"` for CLIP4STR's
    cross-modal one."""
    if isinstance(model, CLIP4STR):
        return [("", model.visual_decoder)] + ([("cross_", model.cross_decoder)] if model.use_language_model else [])
    if isinstance(model, PARSeqRecognizer):
        return [("", model)]
    raise TypeError(f"no ONNX export for {type(model).__name__}: the exporter knows CLIP4STR and the PARSeq layout "
                    f"(PARSeq, STR-Adapter)")


class BufferState(DecodeState):
    """The state of an exported greedy step: `position` is a 0-d int64 tensor and each layer's content
    cache a buffer of every position (N, 2, H, S, D / H). A step writes its position into a copy of the
    buffer and attends to the positions up to it by masking the later ones."""

    def __init__(self, decoder: CharDecoder, memory_kv: List[KeyValue], caches: List[Tensor], num_steps: int) -> None:
        super().__init__(decoder, memory_kv, num_steps, content_kv=list(caches))
        # Row k holds the positional term of content position k: none for BOS, then pos_queries[k - 1].
        self.content_positions = torch.cat([torch.zeros_like(self.positions[:1]), self.positions[:-1]])
        self.slots = torch.arange(num_steps, device=self.positions.device)
        self.num_steps = num_steps

    def content(self, token: Tensor, position: Tensor) -> Tensor:
        return self.embeddings[token] + self.content_positions.index_select(0, position.view(1))

    def query(self, position: Tensor) -> Tensor:
        return self.positions.index_select(0, position.view(1))

    def first_queries(self, position: Tensor) -> Tensor:
        return self.first_q.index_select(2, position.view(1))

    def store(self, layer: int, position: Tensor, key_value: Tensor) -> Tuple[KeyValue, Tensor]:
        cache = torch.where((self.slots == position).view(-1, 1), key_value.unsqueeze(3), self.content_kv[layer])
        self.content_kv[layer] = cache
        mask = torch.zeros(1, self.num_steps, dtype=cache.dtype, device=cache.device)
        return (cache[:, 0], cache[:, 1]), mask.masked_fill(self.slots > position, float("-inf"))


class EncoderGraph(nn.Module):
    """images (N, 3, H, W) -> the memory keys and values of the first decoder (and of the image part of
    CLIP4STR's cross decoder)."""

    def __init__(self, model: Recognizer) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> List[Tensor]:
        model = self.model
        memory = model.encode(images)
        if isinstance(model, CLIP4STR):
            outputs = flatten(model.visual_decoder.memory_kv(memory))
            return outputs + (flatten(model.cross_image_kv(memory)) if model.use_language_model else [])
        return flatten(model.memory_kv(memory))


class StepGraph(nn.Module):
    """token (N,), position (), memory keys and values, caches -> logits (N, C), the caches with the
    position written."""

    def __init__(self, decoder: CharDecoder, num_steps: int) -> None:
        super().__init__()
        self.decoder, self.num_steps = decoder, num_steps

    def forward(self, token: Tensor, position: Tensor, *tensors: Tensor) -> List[Tensor]:
        depth = len(self.decoder.layers)
        state = BufferState(self.decoder, pairs(tensors[:2 * depth]), list(tensors[2 * depth:]), self.num_steps)
        logits = self.decoder.step(state, token, position)
        return [logits, *state.content_kv]


class ParallelGraph(nn.Module):
    """memory keys and values -> the logits (N, S, C) of every position at once."""

    def __init__(self, decoder: CharDecoder, num_steps: int, bos_id: int) -> None:
        super().__init__()
        self.decoder, self.num_steps, self.bos_id = decoder, num_steps, bos_id

    def forward(self, *memory: Tensor) -> Tensor:
        bos = torch.full((memory[0].shape[0], 1), self.bos_id, dtype=torch.long, device=memory[0].device)
        return parallel_decode(self.decoder, pairs(memory), bos, self.num_steps)


class RefineGraph(nn.Module):
    """previous logits (N, L, C), memory keys and values -> refined logits (N, S, C)."""

    def __init__(self, decoder: CharDecoder, num_steps: int, bos_id: int, eos_id: int) -> None:
        super().__init__()
        self.decoder, self.bos_id, self.eos_id = decoder, bos_id, eos_id
        # A constant of the graph: the tracer does not see `cloze_mask` write into a view.
        self.register_buffer("mask", cloze_mask(num_steps, decoder.pos_queries.device), persistent=False)

    def forward(self, logits: Tensor, *memory: Tensor) -> Tensor:
        bos = torch.full((logits.shape[0], 1), self.bos_id, dtype=torch.long, device=logits.device)
        return refine(self.decoder, pairs(memory), logits, bos, self.mask.to(logits.dtype), self.eos_id)


class CaptionGraph(nn.Module):
    """caption token ids (N, context_length), the image keys and values of the cross decoder -> its
    memory keys and values of `[image ; text]`."""

    def __init__(self, model: CLIP4STR) -> None:
        super().__init__()
        self.model = model

    def forward(self, token_ids: Tensor, *image_memory: Tensor) -> List[Tensor]:
        text_kv = self.model.cross_decoder.memory_kv(self.model.encode_caption_ids(token_ids))
        return flatten(self.model.join_kv(pairs(image_memory), text_kv))
