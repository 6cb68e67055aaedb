"""Samplers: ancestral (respaced DDPM) and DDIM, with clamping; MBR selection of candidates."""

from lightning_diffusion.samplers.ancestral import AncestralSampler
from lightning_diffusion.samplers.base import Sampler, nearest_embedding, respaced_steps
from lightning_diffusion.samplers.ddim import DDIMSampler
from lightning_diffusion.samplers.mbr import mbr_select

__all__ = ["AncestralSampler", "DDIMSampler", "Sampler", "mbr_select", "nearest_embedding", "respaced_steps"]
