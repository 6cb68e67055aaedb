"""A scorer that needs no training: how likely the tied rounding head makes a keyword somewhere in the output."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_diffusion.guidance.classifier import LatentScorer


class KeywordScorer(LatentScorer):
    """``sum_k log sum_l p_l(k)`` ``[B]``: for each keyword ``k``, the log of its expected count over the positions
    ``l`` that exist under the rounding head, ``p_l = softmax(denoiser.logits(x0))_l`` (a logsumexp over positions of
    ``log_softmax[..., k]``; close to the log-probability that ``k`` appears when it appears at most once), computed
    over the denoiser's output vocabulary (``kept_logits``: the same probabilities, the other ids have none); a
    keyword outside it is refused.

    Args:
        token_ids: the keyword's token ids (each should appear).
    """

    def __init__(self, token_ids: list[int]) -> None:
        if not token_ids:
            raise ValueError("KeywordScorer: token_ids must name at least one token")
        self.token_ids = [int(i) for i in token_ids]

    def describe(self) -> str:
        return f"KeywordScorer(token_ids={self.token_ids})"

    def __call__(self, x0: Tensor, denoiser: Any, tgt_mask: Tensor | None) -> Tensor:
        columns = denoiser.kept_columns(torch.tensor(self.token_ids, device=x0.device))  # [K]
        if bool((columns < 0).any()):
            outside = [i for i, c in zip(self.token_ids, columns.tolist(), strict=True) if c < 0]
            raise ValueError(
                f"KeywordScorer: token ids {outside} are outside the model's output vocabulary (the training targets "
                "never held them, so the model gives them probability 0): guide with words of the target side"
            )
        log_probs = torch.log_softmax(denoiser.kept_logits(x0).float(), dim=-1)  # [B, L, V']
        keyword = log_probs[..., columns]  # [B, L, K]
        if tgt_mask is not None:
            keyword = keyword.masked_fill(~tgt_mask[..., None], float("-inf"))
        return torch.logsumexp(keyword, dim=1).sum(-1)  # [B]


__all__ = ["KeywordScorer"]
