"""The noise schedule interface: forward process ``q(z_t | z_0)`` and posterior ``q(z_s | z_t, z_0)``.

Time is an integer step ``t`` in ``0..T``: ``t = 0`` is the clean data (``alpha_bar = 1``), ``t = T`` the
noisiest level. Training samples ``t`` in ``1..T``; samplers walk a decreasing subset of ``T..1`` and end at 0.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor, nn


class NoiseSchedule(nn.Module, ABC):
    """A schedule of cumulative signal levels ``alpha_bar(t)``; tables live in buffers (device moves,
    DDP and checkpoints come free).

    Subclasses implement :meth:`alpha_bar`; a schedule may be per position (SeqDiffuSeq's adaptive one), so
    the result always has a position axis.
    """

    def __init__(self, num_steps: int) -> None:
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_steps = num_steps

    @abstractmethod
    def alpha_bar(self, t: Tensor, length: int) -> Tensor:
        """Signal level at integer steps ``t`` ``[B]`` for ``length`` target positions -> ``[B, length]``."""

    def observe(self, t: Tensor, per_token_loss: Tensor, mask: Tensor) -> None:
        """Training statistics hook: per-token losses ``[B, L]`` at steps ``t`` ``[B]``, positions ``mask``
        ``[B, L]``. Fixed schedules ignore it; the adaptive one records them."""

    def commit_observations(self, all_reduce_sum: Callable[[Tensor], Tensor] | None = None) -> None:
        """Called once per training step after :meth:`observe`: fold the step's observations into the
        schedule's statistics, summed over ranks with ``all_reduce_sum`` (None in a single process)."""

    def q_sample(self, z0: Tensor, t: Tensor, noise: Tensor, noise_factor: float = 1.0) -> Tensor:
        """Forward process (DDPM eq. 4 with Difformer's noise factor F):
        ``z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) F eps``.

        Args:
            z0: ``[B, L, D]`` clean latents.
            t: ``[B]`` integer steps in ``0..T`` (``t = 0`` returns ``z0`` exactly).
            noise: ``[B, L, D]`` standard normal noise ``eps``.
            noise_factor: ``F``, scales the noise (Difformer uses 4 for IWSLT).
        """
        abar = self.alpha_bar(t, z0.shape[1]).unsqueeze(-1).to(z0.dtype)
        return abar.sqrt() * z0 + (1.0 - abar).sqrt() * noise_factor * noise

    @staticmethod
    def posterior(x0: Tensor, z_t: Tensor, abar_t: Tensor, abar_s: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior ``q(z_s | z_t, x0)`` for any ``s < t`` (DDPM eq. 6-7 with the step ``t -> s`` of a
        respaced chain, so ``beta = 1 - abar_t / abar_s``).

        Args:
            x0: ``[B, L, D]`` clean estimate.
            z_t: ``[B, L, D]`` current latent.
            abar_t, abar_s: ``[B, L]`` signal levels at ``t`` and ``s`` (``abar_s >= abar_t``).

        Returns:
            mean ``[B, L, D]`` and variance ``[B, L, 1]`` (in units of the unit-variance noise).
        """
        abar_t = abar_t.unsqueeze(-1)
        abar_s = abar_s.unsqueeze(-1)
        alpha = abar_t / abar_s
        beta = 1.0 - alpha
        one_minus_t = (1.0 - abar_t).clamp_min(1e-12)
        coef_x0 = abar_s.sqrt() * beta / one_minus_t
        coef_zt = alpha.sqrt() * (1.0 - abar_s) / one_minus_t
        variance = beta * (1.0 - abar_s) / one_minus_t
        return coef_x0 * x0 + coef_zt * z_t, variance.clamp_min(0.0)

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}"


class TabulatedSchedule(NoiseSchedule):
    """A schedule shared by all positions, tabulated as ``alpha_bar[0..T]`` (buffer ``[T + 1]``).

    Subclasses give a closed form ``f(t)`` on the grid ``t = 0..T``; the table is rebuilt from per-step
    betas ``beta_t = min(1 - f(t) / f(t - 1), max_beta)`` (improved DDPM's ``betas_for_alpha_bar``), so
    ``alpha_bar[0] = 1``, the table decreases strictly and ``alpha_bar[T] > 0``.

    ``__init__`` calls :meth:`alpha_bar_fn` to build the table: a subclass sets the attributes its closed form
    uses *before* calling ``super().__init__(num_steps)``.

    Args:
        num_steps: ``T``.
        max_beta: cap on each step's ``beta_t`` (keeps ``alpha_bar[T] > 0`` when ``f(T) = 0``).
    """

    alpha_bar_table: Tensor

    def __init__(self, num_steps: int, max_beta: float = 0.999) -> None:
        super().__init__(num_steps)
        self.max_beta = max_beta
        f = self.alpha_bar_fn(torch.arange(num_steps + 1, dtype=torch.float64))
        betas = (1.0 - f[1:] / f[:-1]).clamp(1e-8, max_beta)
        table = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, dim=0)])
        self.register_buffer("alpha_bar_table", table.float())

    @abstractmethod
    def alpha_bar_fn(self, t: Tensor) -> Tensor:
        """Closed form signal level at the float64 grid ``t = 0..T`` ``[T + 1]`` -> ``[T + 1]``."""

    def alpha_bar(self, t: Tensor, length: int) -> Tensor:
        return self.alpha_bar_table[t].unsqueeze(-1).expand(-1, length)
