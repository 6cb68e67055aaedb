"""Cosine masking schedule ``alpha(t) = 1 - sin(pi t / 2)`` (MaskGIT's cosine mask ratio; MDLM's cosine schedule)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_diffusion.discrete.schedules.base import MaskingSchedule, _broadcast


class CosineMasking(MaskingSchedule):
    """``alpha(t) = 1 - sin(pi t / 2)``: the masked share is ``cos(pi r / 2)`` at progress ``r = 1 - t`` (MaskGIT,
    Chang et al. 2022, eq. 5's cosine rule), so in reverse few tokens are decided first and most last;
    ``alpha'(t) = -(pi / 2) cos(pi t / 2)``."""

    def alpha(self, t: Tensor, x0: Tensor | None = None) -> Tensor:
        return 1.0 - torch.sin(0.5 * math.pi * _broadcast(t))

    def alpha_derivative(self, t: Tensor, x0: Tensor | None = None) -> Tensor:
        return -0.5 * math.pi * torch.cos(0.5 * math.pi * _broadcast(t))

    def time_at(self, alpha: Tensor) -> Tensor:
        """``t = (2 / pi) arcsin(1 - alpha)``."""
        return (2.0 / math.pi) * torch.asin((1.0 - alpha.to(torch.float32)).clamp(0.0, 1.0))


__all__ = ["CosineMasking"]
