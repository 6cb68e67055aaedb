"""Confidence-threshold parallel decoding: unmask every position the model is sure enough about."""

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
from lightning_diffusion.types import Conditioning


class ConfidenceThresholdSampler(DiscreteSampler):
    """At each step decide every undecided position whose pick has probability >= ``threshold``, and at least the
    most confident one per sequence (Fast-dLLM's threshold rule); the last step decides all that is left.
    Decided tokens are final. Stops as soon as every sequence is decided, so the NFE is at most ``steps`` and
    usually fewer (the reported NFE is the calls made).

    Args:
        steps: the most denoiser calls.
        threshold: confidence in ``(0, 1]`` above which a position is decided.
        grid_time: feed the grid time ``t_k = 1 - k / K`` instead of the schedule time of
            the share still undecided (:func:`~lightning_diffusion.discrete.samplers.base.state_time`; this rule
            decides a data-dependent number of positions, so the grid time says little about the state).
    """

    scores_tokens = True

    def __init__(self, steps: int = 16, temperature: float = 0.0, threshold: float = 0.9, grid_time: bool = False) -> None:
        super().__init__(steps, temperature)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.grid_time = grid_time

    def describe(self) -> str:
        time = ", grid time" if self.grid_time else ""
        return f"{type(self).__name__}(at most {self.steps} steps, threshold={self.threshold:g}{time}, temperature={self.temperature:g})"

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
        x = corruption.prior((b, length), denoiser.vocab_size, device, generator)
        tokens = torch.zeros(b, length, dtype=torch.long, device=device)
        probs = torch.ones(b, length, device=device)  # each token's probability when it was decided
        decided = ~exists
        grid = time_grid(self.steps, device)
        calls = 0
        for k in range(self.steps):
            if bool(decided.all()):
                break
            t_vec = torch.full((b,), float(grid[k]), device=device) if self.grid_time else state_time(schedule, ~decided, exists)
            picks, confidence = predict_positions(denoiser, x, t_vec, cond, tgt_mask, ~decided, self.temperature, generator)
            calls += 1
            open_scores = confidence.masked_fill(decided, -math.inf)
            best = open_scores.argmax(-1, keepdim=True)
            new = open_scores >= self.threshold
            new = new | (torch.zeros_like(new).scatter_(1, best, True) & ~decided.all(-1, keepdim=True))
            if k == self.steps - 1:
                new = ~decided
            new = new & ~decided
            tokens = torch.where(new, picks, tokens)
            probs = torch.where(new, confidence, probs)
            decided = decided | new
            noise = corruption.prior((b, length), denoiser.vocab_size, device, generator)
            x = torch.where(decided, tokens, noise)
            if on_step is not None:
                on_step(k + 1, self.steps)
        return DiscreteSampleOutput(
            token_ids=tokens.masked_fill(~exists, 0), nfe=calls, scores=mean_log_probability(probs, exists)
        )


__all__ = ["ConfidenceThresholdSampler"]
