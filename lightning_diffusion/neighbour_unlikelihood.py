"""Unlikelihood of the neighbours' tokens: a penalty on predicting, at a target position, the word that stands
next to it, which non-autoregressive decoders repeat ("fährt fährt", "auf auf auf").

Each position predicts its word independently of its neighbours' predictions, so where the network is unsure
which of two neighbouring slots a word belongs to, both slots put their mass on it and decode it twice. Token-level
unlikelihood training (Welleck et al. 2020, eq. 4) lowers the probability of chosen negative candidates; here the
candidates of position ``l`` are the true tokens of its neighbours ``l - 1`` and ``l + 1`` where they differ from
``y_l``: the neighbours' words are the repeats non-autoregressive decoders produce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def neighbour_unlikelihood(logits: Tensor, target_ids: Tensor, rows: Tensor, valid: Tensor) -> Tensor:
    """``-sum_{j in {l-1, l+1}} [y_j != y_l] log(1 - p_l(y_j))`` at each scored position ``l``.

    Args:
        logits: ``[N, V]`` the model's logits of ``y`` at the ``N`` True positions of ``rows``, in row-major order.
        target_ids: ``[B, L]`` long, the true tokens ``y``.
        rows: ``[B, L]`` bool, the positions ``logits`` belong to (``N`` of them).
        valid: ``[B, L]`` bool, positions whose token may serve as a neighbour (the loss positions: on a padded
            canvas the padding counts, as the canvas model is trained to produce it).

    Returns:
        ``[N]`` the penalty per scored position (0 where no neighbour differs).

    ``log(1 - p_l(j))`` is computed as the log-sum-exp of the log-probabilities without ``j``: exact and with a
    finite gradient even where the model is certain of the neighbour's word.
    """
    if logits.shape[0] != int(rows.sum()):
        raise ValueError(f"neighbour_unlikelihood: {logits.shape[0]} logit rows for {int(rows.sum())} scored positions")
    log_probs = F.log_softmax(logits.float(), dim=-1)  # [N, V]
    rows_ids = target_ids[rows]  # [N]
    penalty = log_probs.new_zeros(log_probs.shape[0])
    for shift in (1, -1):  # the left neighbour, then the right one
        neighbour_ids = torch.roll(target_ids, shifts=shift, dims=1)  # [B, L]: position l holds y_{l - shift}
        neighbour_valid = torch.roll(valid, shifts=shift, dims=1)
        edge = 0 if shift == 1 else -1  # roll wraps around: the first (last) column has no left (right) neighbour
        neighbour_valid[:, edge] = False
        ids = neighbour_ids[rows]  # [N]
        counts = neighbour_valid[rows] & (ids != rows_ids)  # [N]
        others = torch.logsumexp(log_probs.scatter(1, ids.unsqueeze(1), -torch.inf), dim=-1)  # log(1 - p_l(j))
        penalty = penalty - others * counts.to(others.dtype)
    return penalty


__all__ = ["neighbour_unlikelihood"]
