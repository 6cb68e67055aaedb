"""Ancestral reverse steps of discrete diffusion (D3PM / MDLM)."""

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


class DiscreteAncestralSampler(DiscreteSampler):
    """``x_s ~ p(x_s | x_t) = sum_x0 q(x_s | x_t, x0) p_theta(x0 | x_t)`` on ``K`` evenly spaced times from 1 to 0
    (D3PM eq. 4; for absorbing corruption MDLM eq. 7-8: each masked position is unmasked with probability
    ``(alpha_s - alpha_t) / (1 - alpha_t)`` to a token from ``p_theta``). At ``s = 0`` every position is decided.

    With absorbing corruption and a denoiser without time input, a step that unmasked nothing leaves the
    denoiser's input unchanged, so its output is reused and no call is made (MDLM's caching); the reported NFE counts the calls made.
    ``temperature`` scales the predicted ``x0`` distribution (0: its argmax, one-hot).
    """

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
        b = cond.hidden.shape[0]
        device = cond.hidden.device
        vocab_size = denoiser.vocab_size
        x = corruption.prior((b, length), vocab_size, device, generator)
        grid = time_grid(self.steps, device)
        calls, p0, previous = 0, None, None
        for i in range(self.steps):
            t, s = grid[i], grid[i + 1]
            t_vec = torch.full((b,), float(t), device=device)
            reusable = previous is not None and corruption.absorbing and not denoiser.time_conditioning and torch.equal(x, previous)
            if p0 is None or not reusable:
                logits = denoiser(x, t_vec, cond, tgt_mask).float()
                calls += 1
                if self.temperature == 0:
                    p0 = F.one_hot(logits.argmax(-1), vocab_size).to(torch.float32)
                else:
                    p0 = F.softmax(logits / self.temperature, dim=-1)
            previous = x
            alpha_t = schedule.alpha(t_vec)
            alpha_s = schedule.alpha(torch.full((b,), float(s), device=device))
            x = corruption.reverse_step(x, p0, alpha_s, alpha_t, generator)
            if on_step is not None:
                on_step(i + 1, self.steps)
        x = torch.where(x == vocab_size, p0.argmax(-1), x)  # at s = 0 nothing is masked; guard rounding
        if tgt_mask is not None:
            x = x.masked_fill(~tgt_mask, 0)
        return DiscreteSampleOutput(token_ids=x, nfe=calls)


__all__ = ["DiscreteAncestralSampler"]
