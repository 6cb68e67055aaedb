"""The masking-rate schedule of discrete diffusion: ``alpha(t)``, the probability that a token is still clean."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


class MaskingSchedule(nn.Module, ABC):
    """``alpha(t)`` for continuous time ``t in [0, 1]``: 1 at ``t = 0`` (clean), 0 at ``t = 1`` (fully corrupted),
    non-increasing in between. A module, so statistics some schedules keep (the spindle schedule's per-token
    information) are buffers that travel with the checkpoint.

    Shapes: ``t`` ``[B]``; ``x0`` ``[B, L]`` token ids or None. Token-independent schedules return ``[B, 1]``
    (broadcast over positions); per-token schedules return ``[B, L]`` when given ``x0`` (and their
    token-independent base otherwise, e.g. at sampling time, when ``x0`` is unknown).
    """

    #: True for schedules that must see the training data's token statistics (:meth:`fit`) before training.
    needs_statistics: bool = False

    @abstractmethod
    def alpha(self, t: Tensor, x0: Tensor | None = None) -> Tensor:
        """Probability that a token is clean at time ``t``: ``[B, 1]`` or ``[B, L]``."""

    @abstractmethod
    def alpha_derivative(self, t: Tensor, x0: Tensor | None = None) -> Tensor:
        """``d alpha / dt`` (<= 0), same shape as :meth:`alpha`."""

    def time_at(self, alpha: Tensor) -> Tensor:
        """The inverse of the token-independent ``alpha``: times ``t`` ``[B]`` with ``alpha(t) = alpha`` for clean
        shares ``alpha`` ``[B]`` in [0, 1] (samplers that decide how many tokens stay masked by their own rule feed
        the denoiser the time its training paired with that share). Here by bisection (40 halvings of [0, 1]) for a
        non-increasing ``alpha``, exact at the ends (``t = 1`` for a share as corrupted as ``alpha(1)``); where
        ``alpha`` is flat the answer is as precise as float32 ``alpha`` allows. Closed forms override it."""
        target = alpha.to(torch.float64)
        low = torch.zeros_like(target)
        high = torch.ones_like(target)
        for _ in range(40):
            mid = 0.5 * (low + high)
            above = self.alpha(mid).reshape(-1).to(torch.float64) > target  # alpha(mid) still too clean: t is later
            low = torch.where(above, mid, low)
            high = torch.where(above, high, mid)
        t = 0.5 * (low + high)
        ends = self.alpha(torch.tensor([0.0, 1.0], device=target.device)).reshape(-1).to(torch.float64)
        t = torch.where(target <= ends[1], 1.0, torch.where(target >= ends[0], 0.0, t))  # exact at the ends
        return t.to(torch.float32)

    def rate(self, t: Tensor, x0: Tensor | None = None, max_rate: float = 1e4) -> Tensor:
        """The absorbing ELBO's weight ``-alpha'(t) / (1 - alpha(t))`` (MDLM eq. 10; ``1 / t`` for the linear
        schedule), clipped at ``max_rate`` where ``alpha -> 1``."""
        alpha = self.alpha(t, x0)
        rate = -self.alpha_derivative(t, x0) / (1.0 - alpha).clamp_min(1.0 / max_rate)
        return rate.clamp(0.0, max_rate)

    @property
    def fitted(self) -> bool:
        """Whether the statistics the schedule needs are in place (always True without statistics)."""
        return True

    def fit(self, token_counts: Tensor) -> None:
        """Take the training targets' token counts ``[V]`` (only schedules with ``needs_statistics`` use them)."""

    def describe(self) -> str:
        """The schedule in words, printed with the decoding settings."""
        return type(self).__name__


def _broadcast(t: Tensor) -> Tensor:
    return t.to(torch.float32)[:, None]


__all__ = ["MaskingSchedule"]
