"""Masking-rate schedules ``alpha(t)`` of discrete diffusion: linear, cosine, and DiffusionBERT's spindle."""

from lightning_diffusion.discrete.schedules.base import MaskingSchedule
from lightning_diffusion.discrete.schedules.cosine import CosineMasking
from lightning_diffusion.discrete.schedules.linear import LinearMasking
from lightning_diffusion.discrete.schedules.spindle import SpindleMasking

__all__ = ["CosineMasking", "LinearMasking", "MaskingSchedule", "SpindleMasking"]
