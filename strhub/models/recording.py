"""What the decoders attend to, recorded from the decoding path itself.

Inside `with AttentionRecorder(model) as recorder:` every decoding pass of the model's decoders (the greedy steps,
a non-autoregressive pass, each refinement) is recorded: the cross-attention weights of the query stream in every
layer, softmax(q kᵀ / √d) over the memory, and the pass's logits. `strhub.models.decoder` computes the weights
beside its attention, from the same queries and keys, and returns what it returns without a recorder, so the
outputs are bit-identical. With `leaf_memory`, the memory each decoder reads is made a leaf of autograd (same
values, cut from the encoder's graph) for gradients with respect to it (Grad-CAM). Without a recorder the hooks
cost one context-variable lookup.
"""
import contextvars
import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import torch
from torch import Tensor, nn

_RECORDER: contextvars.ContextVar[Optional["AttentionRecorder"]] = contextvars.ContextVar("attention_recorder",
                                                                                          default=None)


@dataclass(eq=False)
class RecordedPass:
    """One decoding pass of one decoder: `name` is `greedy` (one step per position), `parallel` (every position at
    once) or `refinement K`; `chunks[layer]` holds the recorded weights (N, H, Q_chunk, M) and `logit_chunks` the
    logits (N, Q_chunk, C), one chunk per step of a greedy pass."""

    decoder: str
    name: str
    chunks: List[List[Tensor]]
    logit_chunks: List[Tensor] = field(default_factory=list)

    @property
    def attention(self) -> List[Tensor]:
        """Per layer, the query stream's cross-attention weights (N, Q, H, M)."""
        return [torch.cat(chunks, dim=2).transpose(1, 2) for chunks in self.chunks]

    @property
    def logits(self) -> Tensor:
        """The pass's logits (N, Q, C)."""
        return torch.cat(self.logit_chunks, dim=1)


class AttentionRecorder:
    """Records the passes of `decoders` (name → decoder) while active; see the module's docstring."""

    def __init__(self, decoders: Mapping[str, nn.Module], leaf_memory: bool = False) -> None:
        self.leaf_memory = leaf_memory
        self.passes: List[RecordedPass] = []
        self.memories: Dict[str, List[Tensor]] = {name: [] for name in decoders}
        self._decoders = {id(decoder): name for name, decoder in decoders.items()}
        self._layers = {id(layer.cross_attn): (name, i) for name, decoder in decoders.items()
                        for i, layer in enumerate(decoder.layers)}
        self._current: Dict[str, RecordedPass] = {}
        self._token: Optional[contextvars.Token] = None

    def __enter__(self) -> "AttentionRecorder":
        self._token = _RECORDER.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        _RECORDER.reset(self._token)
        self._token = None

    def passes_of(self, decoder: str) -> List[RecordedPass]:
        return [recorded for recorded in self.passes if recorded.decoder == decoder]

    def begin(self, decoder: nn.Module, greedy: bool) -> None:
        name = self._decoders.get(id(decoder))
        if name is None:
            return
        done = len(self.passes_of(name))
        pass_name = "greedy" if greedy else ("parallel" if done == 0 else f"refinement {done}")
        recorded = RecordedPass(name, pass_name, [[] for _ in decoder.layers])
        self.passes.append(recorded)
        self._current[name] = recorded

    def add_weights(self, attn: nn.Module, weights: Tensor) -> None:
        where = self._layers.get(id(attn))
        if where is not None:
            self._current[where[0]].chunks[where[1]].append(weights)

    def add_logits(self, decoder: nn.Module, logits: Tensor) -> None:
        name = self._decoders.get(id(decoder))
        if name is not None:
            self._current[name].logit_chunks.append(logits)

    def memory(self, decoder: nn.Module, memory: Tensor) -> Tensor:
        name = self._decoders.get(id(decoder))
        if name is None:
            return memory
        if self.leaf_memory:
            memory = memory.detach().requires_grad_()
        self.memories[name].append(memory)
        return memory


def attention_weights(q: Tensor, key: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """softmax(q kᵀ / √d + mask): the weights `scaled_dot_product_attention` applies (N, H, Lq, Lk)."""
    scores = q @ key.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return (scores if mask is None else scores + mask).softmax(-1)


def record_pass(decoder: nn.Module, greedy: bool) -> None:
    """A decoding pass of `decoder` begins (its greedy steps, or one call of `decode`)."""
    recorder = _RECORDER.get()
    if recorder is not None:
        recorder.begin(decoder, greedy)


def record_weights(attn: nn.Module, q: Tensor, key: Tensor, mask: Optional[Tensor] = None) -> None:
    """The attention weights of `q` over `key` in the cross-attention module `attn`."""
    recorder = _RECORDER.get()
    if recorder is not None:
        recorder.add_weights(attn, attention_weights(q, key, mask))


def record_logits(decoder: nn.Module, logits: Tensor) -> Tensor:
    """`logits` (N, C) of a greedy step or (N, Q, C) of a pass, unchanged."""
    recorder = _RECORDER.get()
    if recorder is not None:
        recorder.add_logits(decoder, logits if logits.dim() == 3 else logits.unsqueeze(1))
    return logits


def record_memory(decoder: nn.Module, memory: Tensor) -> Tensor:
    """The memory (or a part of it) that `decoder` reads; a leaf of autograd with the same values when recording
    with `leaf_memory`."""
    recorder = _RECORDER.get()
    return memory if recorder is None else recorder.memory(decoder, memory)
