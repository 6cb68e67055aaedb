"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models"): the deterministic data-prediction solver, first order (= DDIM with ``eta = 0``) or multistep second
order (2M, Algorithm 2), on time-uniform or logSNR-uniform steps.

Notation (per position, the schedule may differ by position): ``alpha = sqrt(abar)``, ``sigma = F sqrt(1 - abar)``
(``F`` the decoding noise factor) and ``lambda = log(alpha / sigma)``. Only differences of ``lambda`` enter the
solver, so ``F`` drops out of them and ``lambda = 0.5 log(abar / (1 - abar))`` is used.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_diffusion.samplers.base import Sampler, StepContext
from lightning_diffusion.samplers.ddim import ddim_step
from lightning_diffusion.schedules.base import NoiseSchedule

Spacing = Literal["time", "logsnr"]


def half_log_snr(abar: Tensor) -> Tensor:
    """DPM-Solver's ``lambda = 0.5 log(abar / (1 - abar))`` ``[...] -> [...]``; ``+inf`` at ``abar = 1``."""
    return 0.5 * (abar.log() - torch.log1p(-abar))


@torch.no_grad()
def logsnr_steps(schedule: NoiseSchedule, steps: int, length: int) -> list[int]:
    """Integer steps whose logSNR ``log(abar / (1 - abar))`` is evenly spaced from its value at ``T`` to its value
    at step 1, then 0 (DPM-Solver's "logSNR" step placement).

    A per-position schedule is placed by the mean logSNR over the ``length`` positions of the canvas. Each of the
    ``K = min(steps, T)`` evenly spaced values goes to the integer step with the nearest logSNR; where the integer
    grid is too coarse for that (two values on one step), the steps are pushed apart, keeping the order:
    with ``w_k = t_k - (K - 1 - k)`` clamped to ``[1, T - K + 1]`` and made non-increasing by a running minimum,
    the chain is ``w_k + (K - 1 - k)``.

    Returns:
        a strictly decreasing list that starts at ``T`` and ends at ``0``, of length ``K + 1`` (as
        :func:`~lightning_diffusion.samplers.base.respaced_steps`, so the NFE a decoding reports holds).
    """
    if steps < 1:
        raise ValueError(f"sampling steps must be >= 1, got {steps}")
    num_steps = schedule.num_steps
    k = min(steps, num_steps)
    device = next(iter(schedule.buffers()), torch.empty(0)).device
    grid = torch.arange(1, num_steps + 1, device=device)  # [T] steps 1..T
    abar = schedule.alpha_bar(grid, length).double().clamp(1e-30, 1.0 - 1e-15)  # [T, L], finite logSNR
    curve = (abar.log() - torch.log1p(-abar)).mean(-1).cpu()  # [T] mean logSNR at steps 1..T, non-increasing
    targets = torch.linspace(float(curve[-1]), float(curve[0]), k, dtype=torch.float64)  # [K] step T's to 1's
    nearest = (curve[None, :] - targets[:, None]).abs().argmin(-1) + 1  # [K] steps, non-increasing
    nearest[0] = num_steps
    offsets = torch.arange(k - 1, -1, -1)  # [K] room each step must leave below it
    w = torch.cummin((nearest - offsets).clamp(1, num_steps - k + 1), dim=0).values
    return [*(w + offsets).tolist(), 0]


class DPMSolverPP(Sampler):
    """DPM-Solver++ in data-prediction (x0) form, deterministic.

    First order (DPM-Solver++ eq. 5, the same as DDIM ``eta = 0``): with ``h = lambda_s - lambda_t``,
    ``z_s = (sigma_s / sigma_t) z_t - alpha_s (exp(-h) - 1) x0_hat``.

    Second order, multistep (2M, Algorithm 2): with the previous update's estimate ``x0_prev`` at label ``t_prev``,
    ``h_prev = lambda_t - lambda_t_prev`` and ``r = h_prev / h``,
    ``D = (1 + 1 / (2 r)) x0_hat - 1 / (2 r) x0_prev`` and ``z_s = (sigma_s / sigma_t) z_t - alpha_s (exp(-h) - 1) D``,
    i.e. the first-order update with ``D`` in place of ``x0_hat``. The first update is first order (no previous
    estimate), and so is every position whose ``r`` is undefined: a target with ``abar_s = 1`` (``lambda_s =
    +inf``; with the library's schedules the last update, into step 0, which lands on ``x0_hat`` as DDIM does:
    DPM-Solver++'s "lower order final" comes for free) or two labels with the same level. The previous estimate
    and level are this call's (:class:`~lightning_diffusion.samplers.base.StepContext`), never the instance's.

    With ``time_difference`` the solver takes the latents to be at their label's level (Bit Diffusion): ``t`` and
    ``t_prev`` are labels, ``s`` the update's target ``s'``.

    Args:
        order: 1 (DDIM) or 2 (2M).
        spacing: ``"time"`` (default): steps evenly spaced in ``t`` (``respaced_steps``, the chain DDIM walks, so
            ``order=1`` is DDIM exactly); ``"logsnr"``: evenly spaced in logSNR (:func:`logsnr_steps`, a
            per-position schedule by its mean over the canvas). The library's cosine and sqrt schedules cap the last
            betas, so their logSNR drops steeply over the last few steps before ``T`` (cosine, ``T = 2000``: -14.3
            at step 1999, -21.2 at 2000) and a logSNR grid spends several calls there.
        See :class:`~lightning_diffusion.samplers.base.Sampler` for the rest (no noise is injected).
    """

    def __init__(
        self,
        steps: int = 20,
        order: int = 2,
        spacing: Spacing = "time",
        clamp: bool = False,
        clamp_from: int = 0,
        noise_factor: float = 1.0,
        time_difference: float = 0.0,
    ) -> None:
        super().__init__(steps, clamp, clamp_from, noise_factor, time_difference)
        if isinstance(order, bool) or order not in (1, 2):
            raise ValueError(f"order must be 1 or 2 (DPM-Solver++ first order or 2M), got {order!r}")
        if spacing not in ("time", "logsnr"):
            raise ValueError(f"spacing must be 'time' or 'logsnr', got {spacing!r}")
        self.order = order
        self.spacing = spacing

    def describe(self) -> str:
        return super().describe()[:-1] + f", order={self.order}, spacing={self.spacing})"

    def chain(self, schedule: NoiseSchedule, length: int) -> list[int]:
        if self.spacing == "logsnr":
            return logsnr_steps(schedule, self.steps, length)
        return super().chain(schedule, length)

    def step(self, z_t: Tensor, x0: Tensor, abar_t: Tensor, abar_s: Tensor, noise: Tensor) -> Tensor:
        """First order, DPM-Solver++ eq. 5 in DDIM's arithmetic (bit for bit ``DDIMSampler(eta=0)``):
        ``eps_hat = (z_t - alpha_t x0_hat) / sigma_t``, ``z_s = alpha_s x0_hat + sigma_s eps_hat``, which is
        ``(sigma_s / sigma_t) z_t + alpha_s (1 - exp(-h)) x0_hat``: :func:`ddim_step` with ``eta = 0``."""
        return ddim_step(z_t, x0, abar_t, abar_s, noise, self.noise_factor, eta=0.0)

    def update(
        self, z_t: Tensor, x0: Tensor, abar_t: Tensor, abar_s: Tensor, noise: Tensor, context: StepContext
    ) -> Tensor:
        """First order at the first update (or with ``order=1``), else 2M (Algorithm 2) per position."""
        if self.order == 1 or context.previous_x0 is None or context.previous_abar_t is None:
            return self.step(z_t, x0, abar_t, abar_s, noise)
        lambda_prev = half_log_snr(context.previous_abar_t)  # [B, L]
        lambda_t = half_log_snr(abar_t)
        lambda_s = half_log_snr(abar_s)
        h_prev = lambda_t - lambda_prev  # h_{i-1}
        h = lambda_s - lambda_t  # h_i
        defined = torch.isfinite(h) & torch.isfinite(h_prev) & (h_prev > 0)
        half_inv_r = torch.where(defined, h / (2.0 * h_prev), torch.zeros_like(h))  # 1 / (2 r_i), [B, L]
        # D_i = (1 + 1/(2 r_i)) x0 - 1/(2 r_i) x0_prev, [B, L, D]
        d = x0 + half_inv_r.unsqueeze(-1) * (x0 - context.previous_x0)
        return self.step(z_t, d, abar_t, abar_s, noise)


__all__ = ["DPMSolverPP", "half_log_snr", "logsnr_steps"]
