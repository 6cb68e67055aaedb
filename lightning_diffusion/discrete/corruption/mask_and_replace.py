"""VQ-Diffusion's mask-and-replace corruption: absorbing plus uniform replacement."""

from __future__ import annotations

from lightning_diffusion.discrete.corruption.base import Corruption


class MaskAndReplaceCorruption(Corruption):
    """Keep with ``alpha``, replace uniformly with ``beta = r (1 - alpha)``, mask with ``gamma = (1 - r)(1 - alpha)``
    (Gu et al. 2022, eq. 5-8, with the cumulative ``beta_bar`` / ``gamma_bar`` tied to one schedule ``alpha``).

    Args:
        replace_fraction: ``r``; VQ-Diffusion ends at ``gamma_bar_T = 0.9``, i.e. ``r = 0.1``.
    """

    def __init__(self, replace_fraction: float = 0.1) -> None:
        if not 0.0 < replace_fraction < 1.0:
            raise ValueError(
                "MaskAndReplaceCorruption: replace_fraction must be strictly between 0 and 1 "
                f"(0 is AbsorbingCorruption, 1 is UniformCorruption), got {replace_fraction}"
            )
        super().__init__(replace_fraction)


__all__ = ["MaskAndReplaceCorruption"]
