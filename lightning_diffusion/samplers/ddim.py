"""DDIM sampling (Song et al. 2021, eq. 12)."""

from __future__ import annotations

from torch import Tensor

from lightning_diffusion.samplers.base import Sampler


def ddim_step(z_t: Tensor, x0: Tensor, abar_t: Tensor, abar_s: Tensor, noise: Tensor, noise_factor: float, eta: float) -> Tensor:
    """One DDIM update ``z_t -> z_s`` (eq. 12 with eq. 16's ``sigma``); shapes as in :meth:`Sampler.step`
    (``abar_t``, ``abar_s`` ``[B, L]``, the rest ``[B, L, D]``). ``eta = 0`` is deterministic (``noise`` unused in
    effect) and equals DPM-Solver++'s first-order update."""
    abar_t = abar_t.unsqueeze(-1)
    abar_s = abar_s.unsqueeze(-1)
    f = noise_factor
    eps = (z_t - abar_t.sqrt() * x0) / (f * (1.0 - abar_t).clamp_min(1e-12).sqrt())
    sigma = eta * ((1.0 - abar_s) / (1.0 - abar_t).clamp_min(1e-12)).sqrt() * (1.0 - abar_t / abar_s).clamp_min(0.0).sqrt()
    direction = (1.0 - abar_s - sigma**2).clamp_min(0.0).sqrt()
    return abar_s.sqrt() * x0 + f * direction * eps + f * sigma * noise


class DDIMSampler(Sampler):
    """``eps_hat = (z_t - sqrt(abar_t) x0_hat) / (F sqrt(1 - abar_t))``;
    ``z_s = sqrt(abar_s) x0_hat + F sqrt(1 - abar_s - sigma^2) eps_hat + F sigma noise`` with
    ``sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)`` (DDIM eq. 16); ``eta = 0`` is
    deterministic, ``eta = 1`` matches ancestral sampling.

    Args:
        eta: stochasticity, in ``[0, 1]``.
        See :class:`Sampler` for the rest.
    """

    def __init__(
        self,
        steps: int = 20,
        eta: float = 0.0,
        clamp: bool = False,
        clamp_from: int = 0,
        noise_factor: float = 1.0,
        time_difference: float = 0.0,
    ) -> None:
        super().__init__(steps, clamp, clamp_from, noise_factor, time_difference)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        self.eta = eta

    def describe(self) -> str:
        return super().describe()[:-1] + f", eta={self.eta})"

    def step(self, z_t: Tensor, x0: Tensor, abar_t: Tensor, abar_s: Tensor, noise: Tensor) -> Tensor:
        return ddim_step(z_t, x0, abar_t, abar_s, noise, self.noise_factor, self.eta)
