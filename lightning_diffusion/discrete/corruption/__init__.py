"""Corruption processes: absorbing, uniform (multinomial) and mask-and-replace, with closed-form posteriors."""

from lightning_diffusion.discrete.corruption.absorbing import AbsorbingCorruption
from lightning_diffusion.discrete.corruption.base import Corruption
from lightning_diffusion.discrete.corruption.mask_and_replace import MaskAndReplaceCorruption
from lightning_diffusion.discrete.corruption.uniform import UniformCorruption

__all__ = ["AbsorbingCorruption", "Corruption", "MaskAndReplaceCorruption", "UniformCorruption"]
