"""Glancing training (GLAT, Qian et al. 2021): reveal more of the target where the model still gets more wrong."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Glancing:
    """GLAT's glancing sampling for a masked (or re-noised) target, in place of a random corruption level.

    A first pass predicts the whole target from the prior (every position corrupted, no gradient); with
    ``d`` its wrong tokens (Hamming distance to the target over the scored positions), ``N = ceil(ratio * d)``
    positions chosen at random keep their true token and the rest are corrupted (GLAT eq. 6-8, with CMLM's
    ``[MASK]`` input in place of GLAT's copied source embeddings). Early in training the model sees most of the
    target and learns to use it; as it improves, the examples become harder. The loss then scores the corrupted
    positions, as for any corruption; the denoiser's time input is the schedule time of the corrupted share
    (:meth:`~lightning_diffusion.discrete.schedules.base.MaskingSchedule.time_at`).

    Args:
        ratio: ``lambda``, the share of the wrong tokens revealed (GLAT: 0.5 annealed to 0.3).
        final_ratio: the ratio after ``anneal_steps`` optimizer steps, reached linearly (None = constant ``ratio``).
        anneal_steps: steps of the linear anneal from ``ratio`` to ``final_ratio``.
        probability: share of the training examples glanced; the others keep the random corruption level of the
            diffusion objective (1 = GLAT, every example).
    """

    def __init__(self, ratio: float = 0.5, final_ratio: float | None = None, anneal_steps: int = 0, probability: float = 1.0) -> None:
        shares = {"ratio": ratio, "probability": probability, "final_ratio": ratio if final_ratio is None else final_ratio}
        for name, value in shares.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Glancing: {name} must be in [0, 1], got {value}")
        if anneal_steps < 0 or (final_ratio is not None and anneal_steps == 0):
            raise ValueError(f"Glancing: anneal_steps must be > 0 with a final_ratio (and >= 0), got {anneal_steps}")
        self.ratio = ratio
        self.final_ratio = final_ratio
        self.anneal_steps = anneal_steps
        self.probability = probability

    def ratio_at(self, step: int) -> float:
        """``lambda`` after ``step`` optimizer steps."""
        if self.final_ratio is None:
            return self.ratio
        progress = min(1.0, step / self.anneal_steps)
        return self.ratio + (self.final_ratio - self.ratio) * progress

    def revealed(self, picks: Tensor, target: Tensor, scored: Tensor, step: int, generator: torch.Generator | None = None) -> Tensor:
        """Which positions keep their true token, ``[B, L]`` bool.

        Args:
            picks: ``[B, L]`` the first pass's tokens (from the fully corrupted input).
            target: ``[B, L]`` the true tokens.
            scored: ``[B, L]`` bool, the positions the loss scores (the only ones revealed or counted).
            step: optimizer steps so far (for the anneal).
        """
        wrong = ((picks != target) & scored).sum(-1)  # d, [B]
        count = torch.ceil(self.ratio_at(step) * wrong.float()).long()  # N, [B]
        noise = torch.rand(target.shape, device=target.device, generator=generator).masked_fill(~scored, math.inf)
        rank = noise.argsort(-1).argsort(-1)  # a random order of the scored positions first
        return (rank < count[:, None]) & scored

    def chosen(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """``[B]`` bool: the examples glanced (all when ``probability`` is 1)."""
        if self.probability >= 1.0:
            return torch.ones(batch_size, dtype=torch.bool, device=device)
        return torch.rand(batch_size, device=device, generator=generator) < self.probability

    def describe(self) -> str:
        anneal = f" -> {self.final_ratio:g} over {self.anneal_steps} steps" if self.final_ratio is not None else ""
        return f"Glancing(ratio={self.ratio:g}{anneal}, probability={self.probability:g})"


__all__ = ["Glancing"]
