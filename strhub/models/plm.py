"""Permutation language modelling (PARSeq), as every family trains with it: the permutations shared
by a batch, their attention masks, and the loss over the permutations of one or more branches."""
import math
from itertools import permutations
from typing import Sequence, Tuple

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


def permutation_loss(branches: Sequence[Tuple[float, nn.Module, Sequence[Tensor]]], tgt_out: Tensor, eos_id: int,
                     pad_id: int) -> Tensor:
    """The original's loss: for each permutation k, the sum over branches of weight x cross-entropy,
    weighted by the permutation's target count n_k, over the sum of the n_k. Permutations after the
    first two (forward and reverse) do not train EOS. `branches` holds (weight, head, head inputs per
    permutation (N, T+1, D)); the head runs on the positions that have a target only, which with a
    large charset saves most of the step (padding adds nothing to the loss)."""
    no_eos = torch.where(tgt_out == eos_id, pad_id, tgt_out)
    loss = tgt_out.new_zeros((), dtype=torch.float)
    numel = tgt_out.new_zeros(())
    for k in range(len(branches[0][2])):
        targets = tgt_out if k < 2 else no_eos
        rows = targets != pad_id
        for weight, head, features in branches:
            if features[k].is_meta:  # the memory planner's profile has no values to pick rows by: every position
                ce = F.cross_entropy(head(features[k]).flatten(end_dim=1), targets.flatten(), ignore_index=pad_id,
                                     reduction="sum")
            else:
                ce = F.cross_entropy(head(features[k][rows]), targets[rows], reduction="sum")
            loss = loss + weight * ce
        numel = numel + rows.sum()
    return loss / numel
