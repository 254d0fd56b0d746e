"""The two-stream (query / content) decoder layer of PARSeq, its token embedding and initialisation, and the
attention they run: `scaled_dot_product_attention` on the weights of `nn.MultiheadAttention` modules (kept for their
state-dict names), the keys and values of a memory projected once per pass. `strhub.models.decoder` decodes with
them."""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strhub.models.recording import record_weights

KeyValue = Tuple[Tensor, Tensor]


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """(N, L, D) -> (N, H, L, D / H)."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def project_kv(attn: nn.MultiheadAttention, x: Tensor) -> KeyValue:
    """Keys and values of `x` for `attn`, split into heads."""
    dim = attn.embed_dim
    weight, bias = attn.in_proj_weight[dim:], attn.in_proj_bias[dim:]
    key, value = F.linear(x, weight, bias).chunk(2, dim=-1)
    return _heads(key, attn.num_heads), _heads(value, attn.num_heads)


def project_q(attn: nn.MultiheadAttention, x: Tensor) -> Tensor:
    """Queries of `x` for `attn`, split into heads."""
    dim = attn.embed_dim
    return _heads(F.linear(x, attn.in_proj_weight[:dim], attn.in_proj_bias[:dim]), attn.num_heads)


def attend(attn: nn.MultiheadAttention, q: Tensor, kv: KeyValue, mask: Optional[Tensor] = None,
           record: bool = False) -> Tensor:
    """Multi-head attention of projected queries (N, H, L, D / H) over projected keys and values;
    `mask` is additive. With `record`, its weights also go to the active recorder."""
    dropout = attn.dropout if attn.training else 0.0
    out = scaled_dot_product(q, kv[0], kv[1], mask, dropout)
    if record:
        record_weights(attn, q, kv[0], mask)
    return attn.out_proj(out.transpose(1, 2).flatten(2))


def scaled_dot_product(q: Tensor, key: Tensor, value: Tensor, mask: Optional[Tensor] = None,
                       dropout: float = 0.0) -> Tensor:
    """`scaled_dot_product_attention`, written out in an ONNX export: ONNX's decomposition of it scales and
    transposes every key at each run, a copy of the whole memory at every greedy step; scaling the queries instead
    lets ONNX Runtime read the keys in place (its MatMul takes them transposed)."""
    if not torch.onnx.is_in_onnx_export():
        return F.scaled_dot_product_attention(q, key, value, attn_mask=mask, dropout_p=dropout)
    scores = (q * q.shape[-1] ** -0.5) @ key.transpose(-2, -1)
    return (scores if mask is None else scores + mask).softmax(-1) @ value


def merge_masks(attn_mask: Optional[Tensor], padding_mask: Optional[Tensor]) -> Optional[Tensor]:
    """One additive mask broadcastable to (N, H, Lq, Lk) from an (Lq, Lk) float mask and an (N, Lk)
    boolean key-padding mask."""
    if padding_mask is None:
        return attn_mask
    dtype = torch.float if attn_mask is None else attn_mask.dtype
    padding = torch.zeros(padding_mask.shape, dtype=dtype, device=padding_mask.device)
    padding = padding.masked_fill(padding_mask, float("-inf"))[:, None, None, :]
    return padding if attn_mask is None else padding + attn_mask


def cloze_mask(size: int, device: torch.device) -> Tensor:
    """Additive (size, size) mask hiding only position r + 1 from row r."""
    mask = torch.zeros(size, size, device=device)
    mask.diagonal(1).fill_(float("-inf"))
    return mask


class DecoderLayer(nn.Module):
    """A pre-LN two-stream decoder layer: both streams share the attention and MLP weights."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float,
                 layer_norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm_q = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm_c = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def stream(self, x: Tensor, q: Tensor, self_kv: KeyValue, memory_kv: KeyValue, mask: Optional[Tensor],
               record: bool = False) -> Tensor:
        """One stream: self-attention of its projected queries `q` over the content keys/values,
        cross-attention over the memory (recorded with `record`), MLP."""
        x = x + self.dropout1(attend(self.self_attn, q, self_kv, mask))
        x = x + self.dropout2(attend(self.cross_attn, project_q(self.cross_attn, self.norm1(x)), memory_kv,
                                     record=record))
        return x + self.dropout3(self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x))))))

    def forward(self, query: Tensor, content: Tensor, memory_kv: KeyValue, query_mask: Optional[Tensor],
                content_mask: Optional[Tensor], update_content: bool) -> Tuple[Tensor, Tensor]:
        content_norm = self.norm_c(content)
        content_kv = project_kv(self.self_attn, content_norm)
        query = self.stream(query, project_q(self.self_attn, self.norm_q(query)), content_kv, memory_kv, query_mask,
                            record=True)
        if update_content:
            content = self.stream(content, project_q(self.self_attn, content_norm), content_kv, memory_kv,
                                  content_mask)
        return query, content


class TokenEmbedding(nn.Module):

    def __init__(self, charset_size: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(charset_size, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, tokens: Tensor) -> Tensor:
        return math.sqrt(self.embed_dim) * self.embedding(tokens)


def decoder_layers(embed_dim: int, num_heads: int, mlp_ratio: int, depth: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList(DecoderLayer(embed_dim, num_heads, embed_dim * mlp_ratio, dropout) for _ in range(depth))


def init_decoder_weights(module: nn.Module) -> None:
    """The original's initialisation of a decoder's modules: truncated normal (std 0.02) for linear
    weights (biases zero) and embeddings, unit LayerNorms; the attention input projections keep
    PyTorch's defaults. Position queries are initialised apart."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.trunc_normal_(sub.weight, std=0.02)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.trunc_normal_(sub.weight, std=0.02)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
