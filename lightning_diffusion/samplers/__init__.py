"""Samplers: ancestral (respaced DDPM) and DDIM, with clamping."""

from lightning_diffusion.samplers.ancestral import AncestralSampler
from lightning_diffusion.samplers.base import Sampler, nearest_embedding, respaced_steps
from lightning_diffusion.samplers.ddim import DDIMSampler
from lightning_diffusion.samplers.rounding import round_to_tokens

__all__ = ["AncestralSampler", "DDIMSampler", "Sampler", "nearest_embedding", "respaced_steps", "round_to_tokens"]
