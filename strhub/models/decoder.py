"""PARSeq's two-stream (query / content) decoder, shared by every model family, and the decoding
passes built on it: greedy with a key/value cache, non-autoregressive, and cloze refinement.

A `CharDecoder` is anything that has `layers`, `norm`, `text_embed`, `pos_queries`, `dropout` and
`head`. The families keep them where their checkpoints name them: CLIP4STR bundles them in each of
its two decoders (`Decoder`); PARSeq and STR-Adapter keep the layers and final norm in `decoder`
(`DecoderStack`) and the rest on the model itself, which is then the `CharDecoder`.

Attention runs through `scaled_dot_product_attention` on the weights of `nn.MultiheadAttention`
modules (kept for their state-dict names). The keys and values of a decoder's memory are projected
once per pass, and greedy decoding caches the content keys and values of past positions. Inside an
`AttentionRecorder` (`strhub.models.recording`) the passes also hand their query stream's cross-attention
weights and their logits to it, without changing what they compute.
"""
from typing import Any, List, Optional, Protocol, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strhub.models.decoder_layers import (
    DecoderLayer,
    KeyValue,
    TokenEmbedding,
    decoder_layers,
    init_decoder_weights,
    merge_masks,
    project_kv,
    project_q,
    scaled_dot_product,
)
from strhub.models.recompute import maybe_checkpoint
from strhub.models.recording import record_logits, record_memory, record_pass, record_weights


class DecodeState:
    """What greedy decoding keeps between steps: the memory's keys and values, the content keys and
    values of past positions (they never see later ones, so they are fixed once computed), the
    scaled character embeddings, the first layer's queries (they depend on the position only) and
    each layer's attention weights split into their query and key-value parts. The content cache
    holds each layer's keys and values (N, 2, H, S, D / H); it is allocated unwritten unless given.

    The methods that take a step's `position` are all that depends on how it is given: here an int,
    with a cache that grows by slicing (an exported graph's state takes a tensor instead)."""

    def __init__(self, decoder: "CharDecoder", memory_kv: List[KeyValue], num_steps: int,
                 content_kv: Optional[List[Tensor]] = None) -> None:
        key = memory_kv[0][0]
        batch, num_heads, _, head_dim = key.shape
        dtype = step_attention_dtype(key)
        self.memory_kv = [(key.to(dtype), value.to(dtype)) for key, value in memory_kv]
        if content_kv is None:
            content_kv = [key.new_empty(batch, 2, num_heads, num_steps, head_dim, dtype=dtype) for _ in decoder.layers]
        self.content_kv = content_kv
        token_ids = torch.arange(decoder.text_embed.embedding.num_embeddings, device=key.device)
        self.embeddings = decoder.text_embed(token_ids)
        self.positions = decoder.pos_queries[0, :num_steps]
        first = decoder.layers[0]
        first_q = project_q(first.self_attn, first.norm_q(decoder.pos_queries[:, :num_steps]))
        self.first_q = first_q.expand(batch, -1, -1, -1)
        self.weights = [_step_weights(layer) for layer in decoder.layers]

    def content(self, token: Tensor, position: int) -> Tensor:
        """The content embedding of `token` (N,) at `position` (BOS, at 0, has no positional term)."""
        content = self.embeddings[token]
        return content + self.positions[position - 1] if position else content

    def query(self, position: int) -> Tensor:
        return self.positions[position]

    def first_queries(self, position: int) -> Tensor:
        """The first layer's projected queries at `position`: (N, H, 1, D / H)."""
        return self.first_q[:, :, position:position + 1]

    def store(self, layer: int, position: int, key_value: Tensor) -> Tuple[KeyValue, Optional[Tensor]]:
        """Caches the content keys and values (N, 2, H, D / H) of `position` in `layer`; returns those
        of every position so far, and the additive mask of their attention (None: all of them)."""
        cache = self.content_kv[layer]
        cache[:, :, :, position] = key_value
        return (cache[:, 0, :, :position + 1], cache[:, 1, :, :position + 1]), None


def step_attention_dtype(key: Tensor) -> torch.dtype:
    """The dtype the greedy steps attend in, given keys `key`: float32 for bfloat16 ones on a CPU, where the
    attention of one query is many times faster in float32 (bfloat16's kernel has large fixed costs); the
    memory's keys and values are cast once per pass, the content cache is kept in it."""
    return torch.float32 if key.dtype == torch.bfloat16 and key.device.type == "cpu" else key.dtype


def _step_weights(layer: DecoderLayer) -> Tuple[Tensor, ...]:
    """The query and key-value halves of a layer's self-attention input projection, and the query
    part of its cross-attention one."""
    dim = layer.self_attn.embed_dim
    self_w, self_b = layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias
    cross_w, cross_b = layer.cross_attn.in_proj_weight, layer.cross_attn.in_proj_bias
    return self_w[:dim], self_b[:dim], self_w[dim:], self_b[dim:], cross_w[:dim], cross_b[:dim]


class CharDecoder(nn.Module):
    """The decoder's computation over `layers`, `norm`, `text_embed`, `pos_queries`, `dropout` and
    `head`, which subclasses provide. With `grad_checkpointing`, `decode` recomputes its layers in the
    backward pass."""

    layers: nn.ModuleList
    norm: nn.LayerNorm
    text_embed: TokenEmbedding
    pos_queries: nn.Parameter
    dropout: nn.Dropout
    head: nn.Linear
    grad_checkpointing = False

    def memory_kv(self, memory: Tensor) -> List[KeyValue]:
        """Each layer's cross-attention keys and values of `memory`."""
        memory = record_memory(self, memory)
        return [project_kv(layer.cross_attn, memory) for layer in self.layers]

    def embed_content(self, tokens: Tensor) -> Tensor:
        """Content embeddings of `tokens` (N, L): position 0 (BOS) has no positional term, position
        k > 0 gets `pos_queries[k - 1]`."""
        embedded = self.text_embed(tokens)
        return torch.cat([embedded[:, :1], embedded[:, 1:] + self.pos_queries[:, :tokens.shape[1] - 1]], dim=1)

    def decode(self, tokens: Tensor, memory_kv: List[KeyValue], queries: Optional[Tensor] = None,
               query_mask: Optional[Tensor] = None, content_mask: Optional[Tensor] = None,
               padding_mask: Optional[Tensor] = None) -> Tensor:
        """Logits (N, Q, C) for the queries (default: the first L position queries) given the context
        `tokens` (N, L), BOS first. Masks are additive (Q, L) / (L, L); `padding_mask` is (N, L)."""
        record_pass(self, greedy=False)
        features = self.features(tokens, memory_kv, queries, query_mask, content_mask, padding_mask)
        return record_logits(self, self.head(features.to(self.head.weight.dtype)))

    def features(self, tokens: Tensor, memory_kv: List[KeyValue], queries: Optional[Tensor] = None,
                 query_mask: Optional[Tensor] = None, content_mask: Optional[Tensor] = None,
                 padding_mask: Optional[Tensor] = None) -> Tensor:
        """What `decode` gives the head (N, Q, D): training applies the head to the rows it needs, which
        saves most of its cost with large charsets."""
        content = self.dropout(self.embed_content(tokens))
        if queries is None:
            queries = self.pos_queries[:, :tokens.shape[1]].expand(tokens.shape[0], -1, -1)
        query = self.dropout(queries)
        query_mask = merge_masks(query_mask, padding_mask)
        content_mask = merge_masks(content_mask, padding_mask)
        for i, layer in enumerate(self.layers):
            query, content = maybe_checkpoint(self.grad_checkpointing, layer, query, content, memory_kv[i], query_mask,
                                              content_mask, i < len(self.layers) - 1)
        return self.norm(query)

    def start(self, memory_kv: List[KeyValue], num_steps: int) -> DecodeState:
        record_pass(self, greedy=True)
        return DecodeState(self, memory_kv, num_steps)

    def step(self, state: DecodeState, token: Tensor, position: int) -> Tensor:
        """One greedy step (eval mode; gradients flow through it): adds content position `position`
        holding `token` (N,) and returns the logits (N, C) of the query at that position, which sees
        every content position so far. Works on (N, D) rows with the layers' weights directly:
        calling the modules costs 10-20 % more on a CPU at batch 1."""
        content = state.content(token, position)
        query = state.query(position)
        for i, (layer, (q_w, q_b, kv_w, kv_b, cross_q_w, cross_q_b)) in enumerate(zip(self.layers, state.weights)):
            content_norm = _layer_norm(layer.norm_c, content)
            num_heads = layer.self_attn.num_heads
            key_value = F.linear(content_norm, kv_w, kv_b).unflatten(-1, (2, num_heads, -1))
            self_kv, self_mask = state.store(i, position, key_value)
            memory_kv = state.memory_kv[i]
            if i == 0:
                q = state.first_queries(position)
            else:
                q = _rows_to_heads(F.linear(_layer_norm(layer.norm_q, query), q_w, q_b), num_heads)
            if i < len(self.layers) - 1:
                content_q = _rows_to_heads(F.linear(content_norm, q_w, q_b), num_heads)
                content = _stream_rows(layer, content, content_q, self_kv, memory_kv, cross_q_w, cross_q_b, self_mask)
            query = _stream_rows(layer, query, q, self_kv, memory_kv, cross_q_w, cross_q_b, self_mask, record=True)
        features = _layer_norm(self.norm, query).to(self.head.weight.dtype)  # a float32 head: float32 logits
        return record_logits(self, F.linear(features, self.head.weight, self.head.bias))


class Decoder(CharDecoder):
    """CLIP4STR's layout: a decoder that owns its layers, token embedding, position queries, final
    norm and head (`visual_decoder.*`, `cross_decoder.*`)."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: int, depth: int, dropout: float,
                 num_classes: int, charset_size: int, num_queries: int) -> None:
        super().__init__()
        self.layers = decoder_layers(embed_dim, num_heads, mlp_ratio, depth, dropout)
        self.text_embed = TokenEmbedding(charset_size, embed_dim)
        self.pos_queries = nn.Parameter(torch.empty(1, num_queries, embed_dim))
        self.norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, num_classes)
        init_decoder_weights(self)
        nn.init.trunc_normal_(self.pos_queries, std=0.02)


class DecoderStack(nn.Module):
    """PARSeq's `decoder`: the layers and the final norm (`decoder.layers.*`, `decoder.norm.*`)."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.layers = decoder_layers(embed_dim, num_heads, mlp_ratio, depth, dropout)
        self.norm = nn.LayerNorm(embed_dim)


class Stepper(Protocol):
    """What greedy decoding needs of a decoder: a state made from the memory, then one step at a time
    (`CharDecoder`, or the step graph of an ONNX export)."""

    def start(self, memory_kv: Any, num_steps: int) -> Any:
        ...

    def step(self, state: Any, token: Tensor, position: int) -> Tensor:
        ...


def greedy_decode(decoder: Stepper, memory_kv: Any, tokens: Tensor, num_steps: int,
                  stop_at: Optional[int] = None) -> Tensor:
    """Greedy decoding that writes each step's argmax into `tokens` (N, S) after the BOS. With
    `stop_at` (the EOS id) it stops once every sample of the batch has produced it."""
    state = decoder.start(memory_kv, num_steps)
    finished = torch.zeros(len(tokens), dtype=torch.bool, device=tokens.device)
    logits = []
    for i in range(num_steps):
        step_logits = decoder.step(state, tokens[:, i], i)
        logits.append(step_logits)
        if i + 1 < num_steps:
            tokens[:, i + 1] = step_logits.argmax(-1)
            if stop_at is not None:
                finished |= tokens[:, i + 1] == stop_at
                if finished.all():
                    break
    return torch.stack(logits, dim=1)


def parallel_decode(decoder: CharDecoder, memory_kv: List[KeyValue], bos: Tensor, num_steps: int) -> Tensor:
    """Non-autoregressive decoding: every position query at once, with BOS as the only context."""
    return decoder.decode(bos, memory_kv, decoder.pos_queries[:, :num_steps].expand(bos.shape[0], -1, -1))


def refine(decoder: CharDecoder, memory_kv: List[KeyValue], logits: Tensor, bos: Tensor, mask: Tensor,
           eos_id: int) -> Tensor:
    """One cloze pass over all position queries of `mask`, the context being the previous
    prediction up to its first EOS."""
    context = torch.cat([bos, logits[:, :-1].argmax(-1)], dim=1)
    padding = (context == eos_id).long().cumsum(-1) > 0
    length = context.shape[1]
    queries = decoder.pos_queries[:, :mask.shape[0]].expand(context.shape[0], -1, -1)
    return decoder.decode(context, memory_kv, queries, mask[:, :length], mask[:length, :length], padding)


def _layer_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _rows_to_heads(x: Tensor, num_heads: int) -> Tensor:
    """(N, D) -> (N, H, 1, D / H)."""
    return x.unflatten(-1, (num_heads, 1, -1))


def _attend_rows(attn: nn.MultiheadAttention, q: Tensor, kv: KeyValue, mask: Optional[Tensor] = None,
                 record: bool = False) -> Tensor:
    """Attention of one query per sample (N, H, 1, D / H), projected out: (N, D); `mask` is additive.
    With `record`, its weights also go to the active recorder."""
    q = q.to(kv[0].dtype)  # see `step_attention_dtype`
    out = scaled_dot_product(q, kv[0], kv[1], mask)
    if record:
        record_weights(attn, q, kv[0], mask)
    return F.linear(out.flatten(1).to(attn.out_proj.weight.dtype), attn.out_proj.weight, attn.out_proj.bias)


def _stream_rows(layer: DecoderLayer, x: Tensor, q: Tensor, self_kv: KeyValue, memory_kv: KeyValue,
                 cross_q_w: Tensor, cross_q_b: Tensor, self_mask: Optional[Tensor] = None,
                 record: bool = False) -> Tensor:
    """`DecoderLayer.stream` in eval mode for one position per sample, on (N, D) rows."""
    x = x + _attend_rows(layer.self_attn, q, self_kv, self_mask)
    cross_q = _rows_to_heads(F.linear(_layer_norm(layer.norm1, x), cross_q_w, cross_q_b), q.shape[1])
    x = x + _attend_rows(layer.cross_attn, cross_q, memory_kv, record=record)
    hidden = F.gelu(F.linear(_layer_norm(layer.norm2, x), layer.linear1.weight, layer.linear1.bias))
    return x + F.linear(hidden, layer.linear2.weight, layer.linear2.bias)
