"""A noise schedule: the Laplace schedule of Hang et al. 2024, as a tabulated (position-independent) schedule."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_diffusion.schedules import TabulatedSchedule


class LaplaceSchedule(TabulatedSchedule):
    """Laplace noise schedule (Hang et al. 2024, "Improved Noise Schedule for Diffusion Training",
    arXiv:2407.03297): with ``u = t / T``, the log signal-to-noise ratio is

    ``lambda(u) = mu - b * sgn(0.5 - u) * ln(1 - 2 |u - 0.5|)``, and ``alpha_bar(u) = sigmoid(lambda(u))``,

    so that for ``u ~ U(0, 1)`` the log-SNR has the Laplace density ``exp(-|lambda - mu| / b) / (2b)``: uniformly
    drawn training steps concentrate around ``SNR = e^mu`` (``mu = 0``: half signal, half noise), with ``b``
    setting how tightly.

    ``lambda`` decreases strictly from ``+inf`` at ``t = 0`` (``alpha_bar = 1``) to ``-inf`` at ``t = T``; the
    table is built by :class:`~lightning_diffusion.schedules.TabulatedSchedule` (betas clipped at ``max_beta``,
    so ``alpha_bar[T]`` is small but positive). With ``mu = 0`` it is symmetric:
    ``alpha_bar(T - t) = 1 - alpha_bar(t)`` (up to that last clip).

    Args:
        num_steps: ``T``.
        mu: centre of the log-SNR density (negative: more training time at high noise).
        b: scale of the log-SNR density (> 0).
    """

    def __init__(self, num_steps: int = 2000, mu: float = 0.0, b: float = 0.5) -> None:
        if b <= 0:
            raise ValueError(f"b must be > 0, got {b}")
        # Set before super().__init__(): TabulatedSchedule.__init__ calls alpha_bar_fn to build the table.
        self.mu = mu
        self.b = b
        super().__init__(num_steps)

    def log_snr(self, u: Tensor) -> Tensor:
        """``lambda(u)`` for ``u = t / T`` in ``[0, 1]`` (any shape, float64 recommended); ``+-inf`` at the ends."""
        return self.mu - self.b * torch.sign(0.5 - u) * torch.log(1.0 - 2.0 * (u - 0.5).abs())

    def alpha_bar_fn(self, t: Tensor) -> Tensor:
        """``sigmoid(lambda(t / T))`` on the float64 grid ``t = 0..T`` ``[T + 1]``: 1 at ``t = 0``, 0 at ``t = T``."""
        return torch.sigmoid(self.log_snr(t / self.num_steps))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mu={self.mu}, b={self.b}"
