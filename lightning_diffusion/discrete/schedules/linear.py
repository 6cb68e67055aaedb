"""Linear masking schedule ``alpha(t) = 1 - t`` (MDLM / RDM's default; the absorbing ELBO weight is ``1 / t``)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_diffusion.discrete.schedules.base import MaskingSchedule, _broadcast


class LinearMasking(MaskingSchedule):
    """``alpha(t) = 1 - t``: the expected share of masked tokens grows linearly with ``t``."""

    def alpha(self, t: Tensor, x0: Tensor | None = None) -> Tensor:
        return 1.0 - _broadcast(t)

    def alpha_derivative(self, t: Tensor, x0: Tensor | None = None) -> Tensor:
        return torch.full_like(_broadcast(t), -1.0)

    def time_at(self, alpha: Tensor) -> Tensor:
        """``t = 1 - alpha``."""
        return (1.0 - alpha.to(torch.float32)).clamp(0.0, 1.0)


__all__ = ["LinearMasking"]
