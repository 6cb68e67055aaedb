"""DiffusionBERT's spindle schedule: each token's masking time is shifted by how much information it carries."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lightning_diffusion.discrete.schedules.base import MaskingSchedule, _broadcast


class SpindleMasking(MaskingSchedule):
    """Per-token ``alpha_i(t) = clamp(1 - t + lam * sin(pi t) * h(x_i), 0, 1)`` (DiffusionBERT, He et al. 2023,
    eq. 9: a linear schedule bent by ``lam * sin(pi t)`` times the token's information).

    ``h(w) = clip(H(w) / E[H] - 1, -1, 1)`` with ``H(w) = -log p(w)`` the token's unigram information in the
    training targets and ``E[H]`` its mean over token occurrences: informative (rare) tokens have ``h > 0``, stay
    clean longer and are masked later; frequent ones are masked earlier. ``alpha(0) = 1`` and ``alpha(1) = 0``
    for every token, and ``lam <= 1 / pi`` keeps every token's ``alpha`` non-increasing in ``t``.

    The statistics come from the training data (:meth:`fit`, called by the model before training) and are
    buffers, so they are in every checkpoint. Without ``x0`` (sampling) the token-independent base ``1 - t``.

    Args:
        lam: the spindle's bend ``lambda`` (0 = the linear schedule), at most ``1 / pi``.
    """

    needs_statistics = True

    def __init__(self, lam: float = 0.3) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0 / math.pi:
            raise ValueError(f"SpindleMasking: lam must be in [0, 1/pi] so every token's alpha is monotone, got {lam}")
        self.lam = lam
        self.register_buffer("information", torch.zeros(0))  # [V] h(w), empty until fit()

    @property
    def fitted(self) -> bool:
        return self.information.numel() > 0

    def fit(self, token_counts: Tensor) -> None:
        counts = token_counts.to(torch.float64).flatten()
        if counts.numel() < 2 or counts.sum() <= 0:
            raise ValueError("SpindleMasking.fit needs token counts over a vocabulary with at least one token seen")
        p = (counts + 1.0) / (counts + 1.0).sum()  # add-one smoothing: unseen tokens are the most informative
        info = -p.log()
        mean = (counts * info).sum() / counts.sum()
        self.information = (info / mean - 1.0).clamp(-1.0, 1.0).to(torch.float32).to(self.information.device)

    def _h(self, x0: Tensor) -> Tensor:
        if not self.fitted:
            raise RuntimeError("SpindleMasking has no token statistics yet: call fit(token_counts) (the model does before training)")
        if int(x0.max()) >= self.information.numel():
            raise ValueError(f"token id {int(x0.max())} is outside the spindle statistics' vocabulary ({self.information.numel()})")
        return self.information[x0]

    def alpha(self, t: Tensor, x0: Tensor | None = None) -> Tensor:
        tt = _broadcast(t)
        if x0 is None:
            return 1.0 - tt
        return (1.0 - tt + self.lam * torch.sin(math.pi * tt) * self._h(x0)).clamp(0.0, 1.0)

    def alpha_derivative(self, t: Tensor, x0: Tensor | None = None) -> Tensor:
        tt = _broadcast(t)
        if x0 is None:
            return torch.full_like(tt, -1.0)
        return -1.0 + self.lam * math.pi * torch.cos(math.pi * tt) * self._h(x0)

    def describe(self) -> str:
        return f"SpindleMasking(lam={self.lam})"

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        stored = state_dict.get(prefix + "information")
        if stored is not None and stored.shape != self.information.shape:
            self.information = torch.empty_like(stored, device=self.information.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


__all__ = ["SpindleMasking"]
