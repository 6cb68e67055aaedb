"""The sampler interface: walk a respaced chain of steps from noise to clean latents.

Decoding lives outside the network: a sampler gets the denoiser, the schedule and the source's
:class:`Conditioning`, and owns the update rule only.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

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


def asymmetric_target(t: int, s: int, time_difference: float) -> int:
    """The step the latents are moved to on the update ``t -> s`` with Bit Diffusion's asymmetric time intervals
    (Chen et al. 2022, ``td``): ``s' = max(0, round(s - td (t - s)))``, rounded to the nearest integer (halves
    up, towards ``s``); ``td = 0`` gives ``s``."""
    if time_difference == 0.0:
        return s
    return max(0, math.floor(s - time_difference * (t - s) + 0.5))


@dataclass(frozen=True)
class StepContext:
    """What one update of a :meth:`Sampler.sample` call knows besides its inputs, built by the loop for that call
    (never stored on the sampler, which every decode call shares).

    Attributes:
        index: 0-based update number in the chain; total: number of updates (the NFE).
        t: chain step the denoiser was labelled with; s: the next chain step (the next call's label);
            target: the step the latents are moved to (``s``, or less noisy with ``time_difference``).
        previous_x0: ``[B, L, D]`` the estimate the previous update used (after clamping); None at the first.
        previous_abar_t: ``[B, L]`` the signal level at the previous update's label ``t``; None at the first.
    """

    index: int
    total: int
    t: int
    s: int
    target: int
    previous_x0: Tensor | None = None
    previous_abar_t: Tensor | None = None


class Sampler(ChainSampler):
    """Base of the continuous (embedding-space) samplers: respaced loop, self-conditioning feed-back, clamping.

    Args:
        steps: number of denoiser calls ``K`` (respaced from the schedule's ``T``); this is the NFE per sequence.
        clamp: apply clamping to ``x0_hat`` before each update.
        clamp_from: first loop index (0-based, counted in sampling steps) at which clamping starts.
        noise_factor: decoding noise factor (Difformer), scales the initial noise and every injected noise.
        time_difference: Bit Diffusion's asymmetric time intervals ``td >= 0``: the update from chain step ``t``
            to ``s`` moves the latents to the less noisy ``s' = max(0, round(s - td (t - s)))`` while the next
            denoiser call is still labelled ``s`` (:func:`asymmetric_target`); 0 (default) is the plain chain.

    Attributes:
        chunk_rows: positions scored at once by clamping and by the final rounding (each builds ``[rows, V]``
            scores); None (default) = about 64 MiB of scores per chunk. Results do not depend on it. Not a
            constructor argument: set it on an instance (e.g. a large value to score everything at once).
    """

    chunk_rows: int | None = None

    def __init__(
        self,
        steps: int = 20,
        clamp: bool = False,
        clamp_from: int = 0,
        noise_factor: float = 1.0,
        time_difference: float = 0.0,
    ) -> None:
        super().__init__(steps)
        if not math.isfinite(time_difference) or time_difference < 0.0:
            raise ValueError(f"time_difference must be a finite number >= 0, got {time_difference!r}")
        self.clamp = clamp
        self.clamp_from = clamp_from
        self.noise_factor = noise_factor
        self.time_difference = time_difference

    @abstractmethod
    def step(self, z_t: Tensor, x0: Tensor, abar_t: Tensor, abar_s: Tensor, noise: Tensor) -> Tensor:
        """One update ``z_t -> z_s`` (``s < t`` on the respaced chain).

        Args:
            z_t: ``[B, L, D]`` current latents; x0: ``[B, L, D]`` the denoiser's (possibly clamped) estimate;
            abar_t, abar_s: ``[B, L]`` signal levels at ``t`` and ``s`` (with ``time_difference``, at the target
            ``s'``); noise: ``[B, L, D]`` fresh Gaussian noise (unit variance; the step applies ``noise_factor``
            itself where its rule injects noise; zeros when the update lands on step 0).

        Returns:
            ``z_s`` ``[B, L, D]``.
        """

    def update(
        self, z_t: Tensor, x0: Tensor, abar_t: Tensor, abar_s: Tensor, noise: Tensor, context: StepContext
    ) -> Tensor:
        """The update the loop calls: :meth:`step` by default. A multistep rule overrides it to read the
        previous update from ``context`` (this call's, see :class:`StepContext`); shapes as in :meth:`step`,
        with ``abar_s`` the level at ``context.target``."""
        return self.step(z_t, x0, abar_t, abar_s, noise)

    def chain(self, schedule: NoiseSchedule, length: int) -> list[int]:
        """The steps the loop visits, strictly decreasing from ``T`` to 0 (``len - 1`` denoiser calls) for a
        canvas of ``length`` positions: :func:`respaced_steps` (time-uniform); override to place them otherwise."""
        return respaced_steps(schedule.num_steps, self.steps)

    def describe(self) -> str:
        """Settings in words, printed next to every score."""
        clamp = f", clamp from step {self.clamp_from}" if self.clamp else ""
        td = f", time_difference={self.time_difference}" if self.time_difference != 0.0 else ""
        return f"{type(self).__name__}(steps={self.steps}{clamp}, noise_factor={self.noise_factor}{td})"

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
        chain = self.chain(schedule, length)
        total = len(chain) - 1
        table = denoiser.kept_table() if self.clamp else None  # the words the head can emit
        x0_prev: Tensor | None = None  # the raw estimate, fed back for self-conditioning
        used_prev: Tensor | None = None  # the estimate the previous update used (clamped)
        abar_prev: Tensor | None = None  # the level at the previous update's label
        for i, (t, s) in enumerate(zip(chain[:-1], chain[1:], strict=True)):
            t_vec = torch.full((b,), t, dtype=torch.long, device=device)
            x0 = denoiser(z, t_vec, cond, tgt_mask, x0_prev if denoiser.self_conditioning else None)
            x0_prev = x0
            if table is not None and i >= self.clamp_from:
                x0 = nearest_embedding(x0, table, self.chunk_rows)
            target = asymmetric_target(t, s, self.time_difference)
            abar_t = schedule.alpha_bar(t_vec, length)
            abar_s = schedule.alpha_bar(torch.full_like(t_vec, target), length)
            if target > 0:
                noise = torch.randn(shape, device=device, generator=generator)
            else:
                noise = torch.zeros(shape, device=device)
            context = StepContext(i, total, t, s, target, used_prev, abar_prev)
            z = self.update(z, x0, abar_t, abar_s, noise, context)
            used_prev, abar_prev = x0, abar_t
            if on_step is not None:
                on_step(i + 1, total)
        token_ids = round_to_tokens(denoiser, z, self.chunk_rows)
        return SampleOutput(latents=z, token_ids=token_ids, nfe=total)
