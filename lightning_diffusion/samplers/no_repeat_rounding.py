"""Rounding without back-to-back repeats: the jointly best token sequence under a penalty on neighbouring equal
tokens, instead of each position's own argmax.

A parallel decoder rounds every position independently, so where two neighbouring estimates both lean towards one
word, both print it ("grünen grünen" where the reference has "grünen Gras"); the word that belongs in one of the
two slots is often the runner-up there. This rounding keeps each position's ``K`` best ids under the head and picks
the sequence that maximises ``sum_l log p_l(y_l) - penalty * #{l : y_l = y_{l-1}}`` by dynamic programming over
the ``K`` candidates (Viterbi; ``penalty = inf`` forbids the repeats among the candidates). With ``penalty = 0`` it
is the argmax. End and padding tokens may repeat (a canvas ends in a run of them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def best_sequence_without_repeats(scores: Tensor, ids: Tensor, counted: Tensor, penalty: float) -> Tensor:
    """Viterbi over ``K`` candidates per position.

    ``best_l(k) = scores_l(k) + max_j [best_{l-1}(j) - penalty * 1(ids_l(k) = ids_{l-1}(j), both counted)]``.

    Args:
        scores: ``[B, L, K]`` log-probabilities of the candidates.
        ids: ``[B, L, K]`` long, the candidates' token ids (distinct within a position).
        counted: ``[B, L, K]`` bool, candidates whose repeat is penalised (real positions, not end / padding ids).
        penalty: ``>= 0``; ``inf`` forbids a counted repeat.

    Returns:
        ``[B, L]`` long, the chosen ids.
    """
    if penalty < 0 or math.isnan(penalty):
        raise ValueError(f"the repeat penalty must be >= 0, got {penalty}")
    b, length, k = scores.shape
    best = scores[:, 0].float()  # [B, K]
    back: list[Tensor] = []
    for position in range(1, length):
        same = ids[:, position, :, None] == ids[:, position - 1, None, :]  # [B, K (here), K (before)]
        same &= counted[:, position, :, None] & counted[:, position - 1, None, :]
        before = best[:, None, :].expand(b, k, k)
        before = torch.where(same, before - penalty, before)  # inf: -inf (with K >= 2 some predecessor stays finite)
        value, arg = before.max(-1)  # [B, K]
        back.append(arg)
        best = scores[:, position].float() + value
    column = best.argmax(-1)  # [B]
    path = [column]
    for arg in reversed(back):
        column = arg.gather(1, column[:, None]).squeeze(1)
        path.append(column)
    columns = torch.stack(path[::-1], dim=1)  # [B, L]
    return ids.gather(2, columns[..., None]).squeeze(-1)


def round_without_repeats(
    denoiser: Any,
    z: Tensor,
    tgt_mask: Tensor | None,
    exempt: Sequence[int],
    penalty: float,
    candidates: int = 4,
    max_elements: int = 1 << 24,
) -> Tensor:
    """Latents ``z`` ``[B, L, D]`` -> token ids ``[B, L]``: each position's ``candidates`` best ids under the rounding
    head (``denoiser.kept_logits``: an output vocabulary's ids only), then :func:`best_sequence_without_repeats`.

    Args:
        tgt_mask: ``[B, L]`` bool, the positions that exist (a repeat across the end of a candidate costs nothing);
            None = all.
        exempt: ids that may repeat (a padded canvas's end and padding; none where ``tgt_mask`` bounds the sentence,
            so that an end token never buys its way in to avoid a repeat).
        penalty: log-probability charged per back-to-back repeat (``inf``: none among the candidates).
        max_elements: rows are rounded in chunks of at most about this many head logits (memory).
    """
    b, length, _ = z.shape
    rows_per_chunk = max(1, max_elements // max(1, length * denoiser.vocab_size))  # V bounds the head's width V'
    scores, ids = [], []
    for start in range(0, b, rows_per_chunk):  # the head in chunks (memory), the dynamic programme once
        log_probs = torch.log_softmax(denoiser.kept_logits(z[start : start + rows_per_chunk]).float(), dim=-1)  # [b', L, V']
        top, columns = log_probs.topk(max(1, min(candidates, log_probs.shape[-1])), dim=-1)  # [b', L, K]
        del log_probs
        scores.append(top)
        ids.append(denoiser.kept_ids(columns))
    candidate_ids = torch.cat(ids)  # [B, L, K]
    counted = ~torch.isin(candidate_ids, torch.tensor(list(exempt), dtype=torch.long, device=z.device))
    if tgt_mask is not None:
        counted &= tgt_mask[..., None]
    return best_sequence_without_repeats(torch.cat(scores), candidate_ids, counted, penalty)


__all__ = ["best_sequence_without_repeats", "round_without_repeats"]
