"""Absorbing-state corruption: every corrupted token becomes ``[MASK]`` (D3PM-absorbing, MDLM, RDM)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_diffusion.discrete.categorical import sample_categorical
from lightning_diffusion.discrete.corruption.base import Corruption


class AbsorbingCorruption(Corruption):
    """``q(x_t | x0) = alpha onehot(x0) + (1 - alpha) onehot(MASK)`` (Austin et al. 2021, Appendix A.2.2).

    Reverse step ``t -> s``: a masked position becomes a token drawn from ``p0`` with probability
    ``(alpha_s - alpha_t) / (1 - alpha_t)``, else stays masked; unmasked tokens never change (MDLM eq. 7-8). This
    closed form replaces the generic ``[B, L, V + 1]`` posterior of the base class.
    """

    def __init__(self) -> None:
        super().__init__(replace_fraction=0.0)

    def reverse_step(
        self, x_t: Tensor, p0: Tensor, alpha_s: Tensor, alpha_t: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        vocab_size = p0.shape[-1]
        a_s = alpha_s.expand(x_t.shape).to(torch.float32)
        a_t = alpha_t.expand(x_t.shape).to(torch.float32)
        unmask_prob = ((a_s - a_t) / (1.0 - a_t).clamp_min(1e-12)).clamp(0.0, 1.0)
        u = torch.rand(x_t.shape, device=x_t.device, generator=generator)
        tokens = sample_categorical(p0, generator)
        unmask = (x_t == vocab_size) & (u < unmask_prob)
        return torch.where(unmask, tokens, x_t)


__all__ = ["AbsorbingCorruption"]
