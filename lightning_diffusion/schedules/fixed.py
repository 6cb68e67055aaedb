"""Position-independent schedules: linear (DDPM), cosine (improved DDPM), sqrt (Diffusion-LM)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_diffusion.schedules.base import TabulatedSchedule


class LinearSchedule(TabulatedSchedule):
    """DDPM's linear betas from ``1e-4`` to ``0.02``, scaled by ``1000 / T``; ``abar = cumprod(1 - beta)``."""

    def __init__(self, num_steps: int = 2000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        self.beta_start = beta_start
        self.beta_end = beta_end
        super().__init__(num_steps)

    def alpha_bar_fn(self, t: Tensor) -> Tensor:
        scale = 1000.0 / self.num_steps
        betas = torch.linspace(scale * self.beta_start, scale * self.beta_end, self.num_steps, dtype=torch.float64)
        return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, dim=0)])


class CosineSchedule(TabulatedSchedule):
    """Improved DDPM eq. 17: ``abar(t) = f(t) / f(0)``, ``f(t) = cos(((t/T + s) / (1 + s)) pi/2)^2``,
    ``s = 0.008``, betas clipped at 0.999."""

    def __init__(self, num_steps: int = 2000, s: float = 0.008) -> None:
        self.s = s
        super().__init__(num_steps)

    def alpha_bar_fn(self, t: Tensor) -> Tensor:
        f = torch.cos(((t / self.num_steps + self.s) / (1.0 + self.s)) * math.pi / 2) ** 2
        return f / f[0]


class SqrtSchedule(TabulatedSchedule):
    """Diffusion-LM's sqrt schedule (DiffuSeq's default): ``abar(t) = 1 - sqrt(t/T + s)``, ``s = 1e-4``,
    betas clipped at 0.999 (so the last level is small but positive)."""

    def __init__(self, num_steps: int = 2000, s: float = 1e-4) -> None:
        self.s = s
        super().__init__(num_steps)

    def alpha_bar_fn(self, t: Tensor) -> Tensor:
        return 1.0 - torch.sqrt(t / self.num_steps + self.s)
