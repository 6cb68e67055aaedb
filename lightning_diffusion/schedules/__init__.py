"""Noise schedules: ``nn.Module``s whose tables are buffers."""

from lightning_diffusion.schedules.adaptive import AdaptiveSchedule
from lightning_diffusion.schedules.base import NoiseSchedule, TabulatedSchedule
from lightning_diffusion.schedules.fixed import CosineSchedule, LinearSchedule, SqrtSchedule

__all__ = ["AdaptiveSchedule", "CosineSchedule", "LinearSchedule", "NoiseSchedule", "SqrtSchedule", "TabulatedSchedule"]
