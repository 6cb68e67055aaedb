"""D3PM's hybrid loss: the variational bound's KL term plus an auxiliary cross-entropy on ``x0``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_diffusion.discrete.losses.base import DiscreteLossInputs, DiscreteLossTerm
from lightning_diffusion.types import masked_mean


class D3PMHybrid(DiscreteLossTerm):
    """``L_vb + ce_weight * L_ce`` (Austin et al. 2021, eq. 5), for any corruption (uniform, mask-and-replace,
    absorbing). With the chain discretised into ``num_steps`` steps and ``s = t - 1 / num_steps``:
    ``L_vb = KL( q(x_s | x_t, x0) || p(x_s | x_t) )`` summed over positions (``p`` is the posterior under the
    predicted ``x0`` distribution, D3PM eq. 4's x0-parameterisation), and at the first step (``s <= 0``)
    ``-log p(x0 | x_t)``; ``L_ce = -log p(x0 | x_t)``. Per example both are means over loss positions.

    Args:
        num_steps: the discretisation ``T`` of the bound (the step is ``1 / T``).
        ce_weight: ``lambda`` of the auxiliary cross-entropy (D3PM: 0.01 for absorbing/uniform text models).
    """

    default_name = "hybrid"
    needs_full_vocabulary = True  # the posterior over every id

    def __init__(self, weight: float = 1.0, num_steps: int = 1000, ce_weight: float = 0.01, name: str | None = None) -> None:
        super().__init__(weight, name)
        if num_steps < 1:
            raise ValueError(f"D3PMHybrid: num_steps must be >= 1, got {num_steps}")
        self.num_steps = num_steps
        self.ce_weight = ce_weight

    def forward(self, inputs: DiscreteLossInputs) -> Tensor:
        log_p0 = F.log_softmax(inputs.logits.float(), dim=-1)  # [B, L, V]
        vocab_size = log_p0.shape[-1]
        nll = -log_p0.gather(-1, inputs.x0[..., None]).squeeze(-1)  # [B, L]
        s = (inputs.t - 1.0 / self.num_steps).clamp_min(0.0)
        alpha_s = inputs.alpha_at(s)
        one_hot = F.one_hot(inputs.x0, vocab_size).to(torch.float32)
        q = inputs.corruption.posterior(inputs.x_t, one_hot, alpha_s, inputs.alpha_t)
        p = inputs.corruption.posterior(inputs.x_t, log_p0.exp(), alpha_s, inputs.alpha_t)
        kl = (q * (q.clamp_min(1e-12).log() - p.clamp_min(1e-12).log())).sum(-1)  # [B, L]
        first = (s <= 0)[:, None]
        vb = torch.where(first, nll, kl)
        return masked_mean(vb, inputs.mask) + self.ce_weight * masked_mean(nll, inputs.mask)


__all__ = ["D3PMHybrid"]
