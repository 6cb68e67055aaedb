"""The sampler interface: walk a respaced chain of steps from noise to clean latents.

Decoding lives outside the network: a sampler gets the denoiser, the schedule and the source's
:class:`Conditioning`, and owns the update rule only.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from lightning_diffusion.denoisers.base import Denoiser
from lightning_diffusion.samplers.chain import ChainSampler
from lightning_diffusion.samplers.rounding import nearest_embedding, round_to_tokens
from lightning_diffusion.schedules.base import NoiseSchedule
from lightning_diffusion.types import Conditioning, SampleOutput


def respaced_steps(num_steps: int, steps: int) -> list[int]:
    """``steps`` evenly spaced integer steps from ``T`` down to 1, then 0 (improved DDPM's respacing).

    Returns a strictly decreasing list that starts at ``T`` and ends at ``0``; its length is
    ``min(steps, T) + 1``.
    """
    if steps < 1:
        raise ValueError(f"sampling steps must be >= 1, got {steps}")
    steps = min(steps, num_steps)
    grid = torch.linspace(num_steps, 1, steps, dtype=torch.float64).round().long().tolist()
    kept = sorted(set(grid), reverse=True)
    return [*kept, 0]


class Sampler(ChainSampler):
    """Base of the continuous (embedding-space) samplers: respaced loop, self-conditioning feed-back, clamping.

    Args:
        steps: number of denoiser calls ``K`` (respaced from the schedule's ``T``); this is the NFE per sequence.
        clamp: apply clamping to ``x0_hat`` before each update.
        clamp_from: first loop index (0-based, counted in sampling steps) at which clamping starts.
        noise_factor: decoding noise factor (Difformer), scales the initial noise and every injected noise.

    Attributes:
        chunk_rows: positions scored at once by clamping and by the final rounding (each builds ``[rows, V]``
            scores); None (default) = about 64 MiB of scores per chunk. Results do not depend on it. Not a
            constructor argument: set it on an instance (e.g. a large value to score everything at once).
    """

    chunk_rows: int | None = None

    def __init__(self, steps: int = 20, clamp: bool = False, clamp_from: int = 0, noise_factor: float = 1.0) -> None:
        super().__init__(steps)
        self.clamp = clamp
        self.clamp_from = clamp_from
        self.noise_factor = noise_factor

    @abstractmethod
    def step(self, z_t: Tensor, x0: Tensor, abar_t: Tensor, abar_s: Tensor, noise: Tensor) -> Tensor:
        """One update ``z_t -> z_s`` (``s < t`` on the respaced chain).

        Args:
            z_t: ``[B, L, D]`` current latents; x0: ``[B, L, D]`` the denoiser's (possibly clamped) estimate;
            abar_t, abar_s: ``[B, L]`` signal levels at ``t`` and ``s``; noise: ``[B, L, D]`` fresh Gaussian noise
            (unit variance; the step applies ``noise_factor`` itself where its rule injects noise; zeros at the
            last step).

        Returns:
            ``z_s`` ``[B, L, D]``.
        """

    def describe(self) -> str:
        """Settings in words, printed next to every score."""
        clamp = f", clamp from step {self.clamp_from}" if self.clamp else ""
        return f"{type(self).__name__}(steps={self.steps}{clamp}, noise_factor={self.noise_factor})"

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        schedule: NoiseSchedule,
        cond: Conditioning,
        length: int,
        tgt_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> SampleOutput:
        """Decode one batch.

        Args:
            cond: conditioning for ``B`` sequences (already repeated per candidate).
            length: canvas length ``L``.
            tgt_mask: ``[B, L]`` positions that exist, or None for all.
            generator: RNG for the initial and injected noise.
            on_step: called with ``(done, total)`` after each step (progress bars).
        """
        b = cond.hidden.shape[0]
        device = cond.hidden.device
        shape = (b, length, denoiser.latent_dim)
        z = self.noise_factor * torch.randn(shape, device=device, generator=generator)
        chain = respaced_steps(schedule.num_steps, self.steps)
        table = denoiser.embedding_table() if self.clamp else None
        x0_prev: Tensor | None = None
        for i, (t, s) in enumerate(zip(chain[:-1], chain[1:], strict=True)):
            t_vec = torch.full((b,), t, dtype=torch.long, device=device)
            x0 = denoiser(z, t_vec, cond, tgt_mask, x0_prev if denoiser.self_conditioning else None)
            x0_prev = x0
            if table is not None and i >= self.clamp_from:
                x0 = nearest_embedding(x0, table, self.chunk_rows)
            abar_t = schedule.alpha_bar(t_vec, length)
            abar_s = schedule.alpha_bar(torch.full_like(t_vec, s), length)
            noise = torch.randn(shape, device=device, generator=generator) if s > 0 else torch.zeros(shape, device=device)
            z = self.step(z, x0, abar_t, abar_s, noise)
            if on_step is not None:
                on_step(i + 1, len(chain) - 1)
        token_ids = round_to_tokens(denoiser, z, self.chunk_rows)
        return SampleOutput(latents=z, token_ids=token_ids, nfe=len(chain) - 1)
