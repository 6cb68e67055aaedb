"""Unrolled denoising for embedding diffusion: train part of the batches on the input the sampler gives the network
after one of its own steps, not on the noised truth.

In training the network only ever sees ``z_t`` made from the true target; in sampling, from its own earlier
estimate. Where that estimate repeats a word ("hält hält hält"), the network has never learnt that the repeat is
wrong and keeps it. SUNDAE (Savinov et al. 2022) closes this gap for token diffusion by also training on the model's
own samples (``DiscreteDiffusionLM(unroll_steps=2)``); this is the embedding-space counterpart: noise the truth to
an earlier step ``t' = t + gap``, let the network estimate ``x0`` there (no gradient), take the deterministic DDIM
step ``t' -> t`` from that estimate (DDIM eq. 12, the update the recipes' sampler makes) and train the network to
recover the true target from the result.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_diffusion.samplers.ddim import ddim_step
from lightning_diffusion.schedules.base import NoiseSchedule


class UnrolledDenoising:
    """Which batches train on the network's own one-step-earlier estimate, and that input.

    Args:
        probability: share of the training batches that get the unrolled input (one coin per batch, so a step costs
            ``1 + probability`` forward passes of the denoiser on average; the first pass has no gradient).
        gap: ``t' - t`` as a share of the schedule's ``T`` (default 0.05: one step of a 20-step sampler), at least
            one step; ``t'`` is capped at ``T``.

    The first pass runs in the module's training mode (dropout on, as in the self-conditioning pass). An adaptive
    schedule does not observe unrolled batches (it fits the error of the noised truth); a loss-aware timestep sampler
    does see their losses.
    """

    def __init__(self, probability: float = 0.5, gap: float = 0.05) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"UnrolledDenoising: probability must be in [0, 1], got {probability}")
        if not 0.0 < gap <= 1.0:
            raise ValueError(f"UnrolledDenoising: gap must be in (0, 1], got {gap}")
        self.probability = probability
        self.gap = gap

    def applies(self) -> bool:
        """Draw this batch's coin (from the global generator, which the trainer reseeds per batch)."""
        return self.probability > 0.0 and float(torch.rand(())) < self.probability

    def earlier(self, t: Tensor, num_steps: int) -> Tensor:
        """``t' = min(T, t + max(1, round(gap * T)))`` ``[B]``."""
        return (t + max(1, round(self.gap * num_steps))).clamp(max=num_steps)

    def input_at(
        self,
        denoise: Callable[[Tensor, Tensor], Tensor],
        z0: Tensor,
        t: Tensor,
        schedule: NoiseSchedule,
        noise_factor: float = 1.0,
    ) -> Tensor:
        """The network's input at ``t`` after one sampler step from its own estimate at ``t'``.

        ``z_t' = sqrt(abar_t') z0 + F sqrt(1 - abar_t') eps``; ``x0_hat = denoise(z_t', t')`` (no gradient);
        ``z_t = sqrt(abar_t) x0_hat + F sqrt(1 - abar_t) eps_hat``, ``eps_hat`` the noise ``z_t'`` implies (DDIM,
        ``eta = 0``). With a perfect denoiser this is exactly ``q(z_t | z0)`` with the same ``eps``.

        Args:
            denoise: ``(z [B, L, D], t [B]) -> x0_hat [B, L, D]``, the network with its conditioning bound.
            z0: ``[B, L, D]`` the clean target latents.
            t: ``[B]`` long, the training steps ``1..T``.
            schedule: the model's noise schedule.
            noise_factor: Difformer's training noise factor ``F``.

        Returns:
            ``[B, L, D]`` the input at ``t`` (no gradient flows to the first pass).
        """
        length = z0.shape[1]
        earlier = self.earlier(t, schedule.num_steps)
        z_earlier = schedule.q_sample(z0, earlier, torch.randn_like(z0), noise_factor)
        with torch.no_grad():
            x0_earlier = denoise(z_earlier, earlier).detach()
        abar_earlier = schedule.alpha_bar(earlier, length).to(z0.dtype)
        abar_t = schedule.alpha_bar(t, length).to(z0.dtype)
        return ddim_step(z_earlier, x0_earlier, abar_earlier, abar_t, torch.zeros_like(z0), noise_factor, eta=0.0)

    def describe(self) -> str:
        return f"UnrolledDenoising(probability={self.probability:g}, gap={self.gap:g})"


__all__ = ["UnrolledDenoising"]
