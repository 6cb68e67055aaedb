"""Tau-leaping for the continuous-time Markov chain view of absorbing diffusion."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_diffusion.discrete.corruption.base import Corruption
from lightning_diffusion.discrete.denoisers.base import TokenDenoiser
from lightning_diffusion.discrete.samplers.base import DiscreteSampleOutput, DiscreteSampler, time_grid
from lightning_diffusion.discrete.schedules.base import MaskingSchedule
from lightning_diffusion.types import Conditioning


class TauLeapingSampler(DiscreteSampler):
    """Tau-leaping (Campbell et al. 2022, Alg. 1) for absorbing corruption: in reverse time the masked position
    ``l`` jumps to token ``j`` at rate ``R_t(MASK -> j) = -alpha'(t) / (1 - alpha(t)) * p_theta(x0_l = j | x_t)``.
    Over a leap of length ``tau`` with the rates frozen at ``t``, a masked position jumps with probability
    ``1 - exp(-tau * rate)`` (at most one jump per position: the absorbing chain has no token-to-token rates),
    to a token drawn from ``p_theta``. The last leap (to ``t = 0``) unmasks everything left.
    """

    needs_absorbing = True

    def sample(
        self,
        denoiser: TokenDenoiser,
        schedule: MaskingSchedule,
        corruption: Corruption,
        cond: Conditioning,
        length: int,
        tgt_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> DiscreteSampleOutput:
        if not corruption.absorbing:
            raise ValueError(f"TauLeapingSampler needs absorbing corruption, got {corruption.describe()}")
        b = cond.hidden.shape[0]
        device = cond.hidden.device
        vocab_size = denoiser.vocab_size
        x = torch.full((b, length), vocab_size, dtype=torch.long, device=device)
        grid = time_grid(self.steps, device)
        for k in range(self.steps):
            t, s = float(grid[k]), float(grid[k + 1])
            t_vec = torch.full((b,), t, device=device)
            logits = denoiser(x, t_vec, cond, tgt_mask).float()
            if self.temperature == 0:
                picks = logits.argmax(-1)
            else:
                probs = F.softmax(logits / self.temperature, dim=-1)
                picks = torch.multinomial(probs.reshape(-1, vocab_size), 1, generator=generator).reshape(b, length)
            rate = schedule.rate(t_vec).expand(b, length)
            jump = 1.0 - torch.exp(-(t - s) * rate) if s > 0 else torch.ones_like(rate)
            u = torch.rand((b, length), device=device, generator=generator)
            x = torch.where((x == vocab_size) & (u < jump), picks, x)
            if on_step is not None:
                on_step(k + 1, self.steps)
        if tgt_mask is not None:
            x = x.masked_fill(~tgt_mask, 0)
        return DiscreteSampleOutput(token_ids=x, nfe=self.steps)


__all__ = ["TauLeapingSampler"]
