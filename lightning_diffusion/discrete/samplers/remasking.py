"""Re-masking by confidence: mask-predict / RDM top-k decoding (Token-Critic's rule with the model as critic)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lightning_diffusion.discrete.corruption.base import Corruption
from lightning_diffusion.discrete.denoisers.base import TokenDenoiser
from lightning_diffusion.discrete.samplers.base import (
    DiscreteSampleOutput,
    DiscreteSampler,
    mean_log_probability,
    predict_positions,
    state_time,
    time_grid,
)
from lightning_diffusion.discrete.schedules.base import MaskingSchedule
from lightning_diffusion.discrete.schedules.linear import LinearMasking
from lightning_diffusion.types import Conditioning


def decided_counts(lengths: Tensor, rule: MaskingSchedule, steps: int) -> Tensor:
    """Positions decided after each of ``K`` steps ``[K, B]``: ``n_k = L - floor(L (1 - alpha(t_k)))`` on the
    time grid ``t_k = 1 - k / K`` (a linear ``rule`` decides ``L / K`` per step, a cosine one few first and most
    last), non-decreasing, at least one more per step while any is left, and ``n_K = L``."""
    grid = time_grid(steps, lengths.device)[1:]  # t_1 .. t_K = 0
    alpha = rule.alpha(grid).reshape(-1)  # [K]
    L = lengths.to(torch.float64)[None, :]
    masked = torch.floor(L * (1.0 - alpha.to(torch.float64))[:, None] + 1e-4)  # float32 times: 0.4 is 0.39999998
    counts = (L - masked).long()  # [K, B]
    floor = torch.minimum(torch.arange(1, steps + 1, device=lengths.device)[:, None], lengths[None, :])
    counts = torch.maximum(torch.cummax(counts, dim=0).values, floor)
    counts[-1] = lengths
    return counts


def repeated_picks(tokens: Tensor, scores: Tensor, exists: Tensor) -> Tensor:
    """``[B, L]`` bool: positions whose token equals a neighbour's and whose score is the lower of the two (ties:
    the right one), among existing positions."""
    same = (tokens[:, 1:] == tokens[:, :-1]) & exists[:, 1:] & exists[:, :-1]  # pairs (l - 1, l)
    right_lower = scores[:, 1:] <= scores[:, :-1]
    flagged = torch.zeros_like(exists)
    flagged[:, 1:] |= same & right_lower
    flagged[:, :-1] |= same & ~right_lower
    return flagged


class MaskPredictSampler(DiscreteSampler):
    """Iterative re-masking (mask-predict, Ghazvininejad et al. 2019; RDM's top-k decoding, Zheng et al. 2023,
    Alg. 2; Token-Critic's re-masking with the denoiser's own probability as the critic score).

    Start from the prior (all ``[MASK]`` for absorbing corruption). At step ``k`` predict every undecided
    position, score each pick by the model's probability, and keep the ``n_k`` best-scored positions decided
    (:func:`decided_counts`, from ``rule``); the rest go back to the prior state (``[MASK]``, or a fresh prior draw
    for uniform / mask-and-replace corruption, as RDM re-noises them).

    Args:
        steps: ``K`` denoiser calls (RDM's translation results use 10-16).
        temperature: see :class:`DiscreteSampler`.
        rule: the share still masked after step ``k`` is ``1 - rule.alpha(1 - k / K)``; default linear
            (``L / K`` per step, mask-predict's rule); :class:`~lightning_diffusion.discrete.schedules.CosineMasking`
            decides few tokens first (MaskGIT).
        rescore: mask-predict: decided tokens keep their token and score but compete again at every step, so a
            low-confidence one can be re-masked; False (RDM / MaskGIT): decided tokens are final.
        avoid_repeats: before the last step, a pick equal to its left neighbour's token ranks below every other
            pick (the less confident of the two is re-masked and predicted again with more context): the
            non-autoregressive "auf auf auf" failure, fixed at decoding time. Off by default.
        grid_time: feed the denoiser the grid time ``t_k = 1 - k / K``; default False:
            the time at which the model's training schedule masks the share the rule left masked
            (:func:`~lightning_diffusion.discrete.samplers.base.state_time`; the same when ``rule`` is the schedule).
    """

    scores_tokens = True

    def __init__(
        self,
        steps: int = 10,
        temperature: float = 0.0,
        rule: MaskingSchedule | None = None,
        rescore: bool = True,
        avoid_repeats: bool = False,
        grid_time: bool = False,
    ) -> None:
        super().__init__(steps, temperature)
        self.rule = rule if rule is not None else LinearMasking()
        self.rescore = rescore
        self.avoid_repeats = avoid_repeats
        self.grid_time = grid_time

    def describe(self) -> str:
        how = "re-scored" if self.rescore else "final once decided"
        repeats = ", repeats re-masked" if self.avoid_repeats else ""
        time = "grid time" if self.grid_time else "schedule time of the masked share"
        return (
            f"{type(self).__name__}(steps={self.steps}, {type(self.rule).__name__} rule, tokens {how}{repeats}, "
            f"{time}, temperature={self.temperature:g})"
        )

    def sample(
        self,
        denoiser: TokenDenoiser,
        schedule: MaskingSchedule,
        corruption: Corruption,
        cond: Conditioning,
        length: int,
        tgt_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> DiscreteSampleOutput:
        b = cond.hidden.shape[0]
        device = cond.hidden.device
        exists = tgt_mask if tgt_mask is not None else torch.ones(b, length, dtype=torch.bool, device=device)
        counts = decided_counts(exists.sum(-1), self.rule, self.steps)  # [K, B]
        x = corruption.prior((b, length), denoiser.vocab_size, device, generator)
        tokens = torch.zeros(b, length, dtype=torch.long, device=device)
        scores = torch.full((b, length), -math.inf, device=device)
        decided = torch.zeros(b, length, dtype=torch.bool, device=device)
        grid = time_grid(self.steps, device)
        for k in range(self.steps):
            t_vec = torch.full((b,), float(grid[k]), device=device) if self.grid_time else state_time(schedule, ~decided, exists)
            picks, confidence = predict_positions(denoiser, x, t_vec, cond, tgt_mask, ~decided & exists, self.temperature, generator)
            tokens = torch.where(decided, tokens, picks)
            scores = torch.where(decided, scores, confidence)
            ranking = scores.masked_fill(~exists, -math.inf)
            if self.avoid_repeats and k < self.steps - 1:
                ranking = ranking - 2.0 * repeated_picks(tokens, scores, exists).to(ranking.dtype)  # below any probability
            if not self.rescore:
                ranking = ranking.masked_fill(decided, math.inf)  # decided tokens stay decided
            order = ranking.argsort(dim=-1, descending=True)
            rank = order.argsort(dim=-1)
            decided = (rank < counts[k][:, None]) & exists
            noise = corruption.prior((b, length), denoiser.vocab_size, device, generator)
            x = torch.where(decided, tokens, noise)
            if on_step is not None:
                on_step(k + 1, self.steps)
        return DiscreteSampleOutput(
            token_ids=tokens.masked_fill(~exists, 0), nfe=self.steps, scores=mean_log_probability(scores, exists)
        )


__all__ = ["MaskPredictSampler", "decided_counts", "repeated_picks"]
