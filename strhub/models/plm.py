"""Permutation language modelling (PARSeq), as every family trains with it: the permutations shared
by a batch, their attention masks, and the loss over the permutations of one or more branches."""
import math
from itertools import permutations
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Of the 24 orders of 4 characters, those whose mirror comes later: with mirroring they give all 24.
FOUR_CHAR_SELECTOR = [0, 3, 4, 6, 9, 10, 12, 16, 17, 18, 19, 21]


def generate_permutations(num_chars: int, perm_num: int, perm_forward: bool, perm_mirrored: bool,
                          device: torch.device) -> Tensor:
    """Permutations (P, T+2) of the positions BOS, characters, EOS, shared by a batch whose longest
    label has `num_chars` characters: the forward order, then (if mirrored) its reverse with EOS given
    the null context, then sampled orders and their mirrors. Short labels sample from the full pool
    of orders without repeats."""
    if num_chars == 1:
        return torch.arange(3, device=device).unsqueeze(0)
    max_gen = perm_num // 2 if perm_mirrored else perm_num
    perms = [torch.arange(num_chars, device=device)] if perm_forward else []
    max_perms = math.factorial(num_chars) // (2 if perm_mirrored else 1)
    num_gen = min(max_gen, max_perms)
    if num_chars < 5:
        selector = FOUR_CHAR_SELECTOR if num_chars == 4 and perm_mirrored else list(range(max_perms))
        pool = torch.as_tensor(list(permutations(range(num_chars))), device=device)[selector]
        if perm_forward:
            pool = pool[1:]
        picks = pool[torch.randperm(len(pool))[:num_gen - len(perms)].to(device)]
        perms = torch.cat([torch.stack(perms), picks]) if perms else picks
    else:
        perms += [torch.randperm(num_chars, device=device) for _ in range(num_gen - len(perms))]
        perms = torch.stack(perms)
    if perm_mirrored:
        perms = torch.stack([perms, perms.flip(-1)], dim=1).flatten(end_dim=1)
    bos = perms.new_zeros(len(perms), 1)
    eos = perms.new_full((len(perms), 1), num_chars + 1)
    perms = torch.cat([bos, perms + 1, eos], dim=1)
    if len(perms) > 1:
        perms[1, 1:] = torch.arange(num_chars + 1, 0, -1, device=device)
    return perms


def permutation_masks(perms: Tensor) -> Tuple[Tensor, Tensor]:
    """Content (P, T+1, T+1) and query (P, T+1, T+1) additive masks for permutations (P, T+2) of
    the positions BOS, characters, EOS: a position sees those that come no later in its permutation,
    and a query never sees the position it predicts."""
    num, size = perms.shape
    order = torch.arange(size, device=perms.device).expand(num, -1)
    rank = torch.empty_like(perms).scatter_(1, perms, order)
    hidden = rank[:, None, :] > rank[:, :, None]
    zeros = torch.zeros(num, size, size, device=perms.device)
    content = zeros.masked_fill(hidden, float("-inf"))[:, :-1, :-1]
    eye = torch.eye(size, dtype=torch.bool, device=perms.device)
    query = zeros.masked_fill(hidden | eye, float("-inf"))[:, 1:, :-1]
    return content, query


def permutation_targets(tgt_out: Tensor, num_perms: int, eos_id: int, pad_id: int) -> Tensor:
    """The targets (P, N, T+1) of each permutation, as the original trains them: permutations after the first
    two (forward and reverse) do not train EOS. The loss is each branch's summed cross-entropy over these
    targets, weighted, over the count of targets that are not padding."""
    no_eos = torch.where(tgt_out == eos_id, pad_id, tgt_out)
    return torch.stack([tgt_out if k < 2 else no_eos for k in range(num_perms)])


# Logits held at a time by the chunked head loss (16 MiB in fp32): large charsets go a few hundred rows at a time.
CHUNK_ELEMENTS = 2**22


def chunk_rows(num_classes: int) -> int:
    """Rows of a head over `num_classes` classes that make one chunk of `CHUNK_ELEMENTS` logits."""
    return max(1, CHUNK_ELEMENTS // num_classes)


class _LinearCrossEntropy(torch.autograd.Function):
    """The summed cross-entropy of a linear head's logits `inputs @ weight.T + bias` (R, C) against targets (R,),
    and (`with_ids`) each row's argmax class. The rows go a chunk at a time, whose log-probabilities become their
    gradient in place: the (R, C) logits and their softmax never exist whole, and no pass over them is left for
    the backward."""

    @staticmethod
    def forward(ctx: Any, inputs: Tensor, weight: Tensor, bias: Tensor, targets: Tensor,
                with_ids: bool) -> Tuple[Tensor, Tensor]:
        chunk = chunk_rows(len(weight))
        want_grad = any(ctx.needs_input_grad[:3])
        loss = inputs.new_zeros((), dtype=torch.float)
        ids, grad_inputs = [targets.new_empty(0)], [inputs.new_empty(0, inputs.shape[1])]
        grad_weight, grad_bias = torch.zeros_like(weight), torch.zeros_like(bias)
        for start in range(0, len(inputs), chunk):
            rows, row_targets = inputs[start:start + chunk], targets[start:start + chunk, None]
            log_probs = F.linear(rows, weight, bias).float().log_softmax(-1)
            if with_ids:
                ids.append(log_probs.max(-1).indices)
            loss = loss - log_probs.gather(1, row_targets).sum()
            if want_grad:  # softmax - one-hot, in place
                grad = log_probs.exp_().scatter_add_(1, row_targets, log_probs.new_full(row_targets.shape, -1.0))
                grad_inputs.append(grad.to(weight.dtype) @ weight)
                grad_weight += grad.t().to(rows.dtype) @ rows
                grad_bias += grad.sum(0)
        ids = torch.cat(ids)
        ctx.mark_non_differentiable(ids)
        ctx.save_for_backward(torch.cat(grad_inputs).to(inputs.dtype), grad_weight, grad_bias)
        return loss, ids

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, grad_ids: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
        return tuple(grad * grad_loss for grad in ctx.saved_tensors) + (None, None)


def head_cross_entropy(head: nn.Linear, features: Tensor, targets: Tensor, ignore_id: int,
                       all_ids: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """The cross-entropy of `head(features)` (..., D) summed over the positions whose target (...) is not
    `ignore_id`, the only ones the head runs on with gradients; with `all_ids`, also the argmax class of every
    position (...), which the positions without a target get from a forward pass alone. Equal to
    `F.cross_entropy(head(features), targets, ignore_index=ignore_id, reduction="sum")` and its gradients."""
    if features.is_meta:  # the memory planner's profile has no values to pick rows by: every position
        loss, ids = _LinearCrossEntropy.apply(features.flatten(end_dim=-2), head.weight, head.bias, targets.flatten(),
                                              all_ids)
        return loss, ids.view(targets.shape) if all_ids else None
    rows = targets != ignore_id
    loss, target_ids = _LinearCrossEntropy.apply(features[rows], head.weight, head.bias, targets[rows], all_ids)
    if not all_ids:
        return loss, None
    ids = torch.empty_like(targets)
    ids[rows] = target_ids
    ids[~rows] = argmax_classes(head, features[~rows].detach())
    return loss, ids


@torch.no_grad()
def argmax_classes(head: nn.Linear, features: Tensor) -> Tensor:
    """The argmax class of `head(features)` (..., D) at every position (...), a chunk of rows at a time."""
    rows = features.flatten(end_dim=-2)
    chunk = chunk_rows(head.out_features)
    ids = [head(rows[start:start + chunk]).max(-1).indices for start in range(0, len(rows), chunk)]
    return (torch.cat(ids) if ids else rows.new_empty(0, dtype=torch.long)).view(features.shape[:-1])
