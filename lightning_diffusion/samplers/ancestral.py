"""Ancestral (DDPM) sampling on a respaced chain."""

from __future__ import annotations

from torch import Tensor

from lightning_diffusion.samplers.base import Sampler
from lightning_diffusion.schedules.base import NoiseSchedule


class AncestralSampler(Sampler):
    """``z_s ~ q(z_s | z_t, x0_hat)`` (DDPM eq. 6-7) with betas rebuilt from the kept levels,
    ``beta = 1 - abar_t / abar_s`` (improved DDPM's respacing). Noise is scaled by the decoding noise factor."""

    def step(self, z_t: Tensor, x0: Tensor, abar_t: Tensor, abar_s: Tensor, noise: Tensor) -> Tensor:
        mean, variance = NoiseSchedule.posterior(x0, z_t, abar_t, abar_s)
        return mean + self.noise_factor * variance.sqrt() * noise
