"""Classifier guidance on the x0 estimate (Dhariwal & Nichol 2021; Diffusion-LM's plug-and-play control): after
the denoiser's estimate, ``x0 <- x0 + s * grad_x0 log p(y | x0)`` with a differentiable scorer of latents."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from lightning_diffusion.guidance.base import Guidance, GuidedDenoiser
from lightning_diffusion.types import Conditioning


class LatentScorer(ABC):
    """A differentiable log-score of clean latents, ``log p(y | x0)`` up to a constant, per sequence.

    Attributes:
        calls_per_step: network evaluations the scorer itself makes per call (0 for a scorer that reads only the
            rounding head, like :class:`~lightning_diffusion.guidance.keyword.KeywordScorer`); counted in the NFE.
    """

    calls_per_step: int = 0

    @abstractmethod
    def __call__(self, x0: Tensor, denoiser: Any, tgt_mask: Tensor | None) -> Tensor:
        """Log-scores ``[B]`` of latents ``x0`` ``[B, L, D]`` (differentiable in ``x0``).

        Args:
            denoiser: the model's denoiser (its ``logits``, ``embedding_table()``, ...).
            tgt_mask: ``[B, L]`` positions that exist, or None for all.
        """

    def describe(self) -> str:
        return type(self).__name__


def score_gradient(scorer: LatentScorer, x0: Tensor, denoiser: Any, tgt_mask: Tensor | None) -> Tensor:
    """``grad_x0 sum_b scorer(x0)_b`` ``[B, L, D]`` (each row's gradient of its own score), computed with gradients
    on inside the no-grad (or inference-mode) decoding; nothing reaches the model's parameters."""
    with torch.inference_mode(False), torch.enable_grad():
        x = x0.clone().requires_grad_(True)  # a clone: an inference-mode tensor cannot enter autograd
        mask = tgt_mask.clone() if tgt_mask is not None else None
        (grad,) = torch.autograd.grad(scorer(x, denoiser, mask).sum(), x)
    return grad


class ClassifierGuidance(Guidance):
    """``x0 <- x0 + scale * grad_x0 scorer(x0)`` after every denoiser call (continuous family only; the samplers then
    clamp and step from the guided estimate).

    Args:
        scorer: the :class:`LatentScorer` ``log p(y | x0)``.
        scale: step size ``s`` of the gradient step (0 = unguided).
    """

    supports_tokens = False

    def __init__(self, scorer: LatentScorer, scale: float = 1.0) -> None:
        if not scale >= 0 or scale == float("inf"):
            raise ValueError(f"ClassifierGuidance: scale must be finite and >= 0, got {scale}")
        self.scorer = scorer
        self.scale = float(scale)

    @property
    def calls_per_step(self) -> int:
        return 1 + self.scorer.calls_per_step

    def describe(self) -> str:
        return f"classifier guidance {self.scorer.describe()} scale={self.scale:g}"

    def guide_latents(self, denoiser: Any, null_condition: Tensor | None) -> Any:
        return ClassifierGuided(denoiser, self.scorer, self.scale)


class ClassifierGuided(GuidedDenoiser):
    """A continuous denoiser whose ``x0`` estimate takes one gradient step up the scorer (see
    :class:`ClassifierGuidance`)."""

    def __init__(self, denoiser: Any, scorer: LatentScorer, scale: float) -> None:
        super().__init__(denoiser)
        self.scorer = scorer
        self.scale = scale

    def __call__(
        self,
        z_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        tgt_mask: Tensor | None = None,
        self_cond: Tensor | None = None,
    ) -> Tensor:
        """Guided ``x0`` ``[B, L, D]``: ``x0 + s * grad_x0 scorer(x0)``."""
        x0 = self.denoiser(z_t, t, cond, tgt_mask, self_cond)
        return x0 + self.scale * score_gradient(self.scorer, x0, self.denoiser, tgt_mask)


__all__ = ["ClassifierGuidance", "ClassifierGuided", "LatentScorer", "score_gradient"]
