"""Uniform (multinomial) corruption: every corrupted token is redrawn uniformly (Hoogeboom et al. 2021)."""

from __future__ import annotations

from lightning_diffusion.discrete.corruption.base import Corruption


class UniformCorruption(Corruption):
    """``q(x_t | x0) = alpha onehot(x0) + (1 - alpha) / V`` (multinomial diffusion, Hoogeboom et al. 2021, eq. 13;
    D3PM-uniform). No ``[MASK]`` state: at ``t = 1`` every token is uniform."""

    def __init__(self) -> None:
        super().__init__(replace_fraction=1.0)


__all__ = ["UniformCorruption"]
