"""Samplers: ancestral (respaced DDPM), DDIM and DPM-Solver++, with clamping."""

from lightning_diffusion.samplers.ancestral import AncestralSampler
from lightning_diffusion.samplers.base import (
    Sampler,
    StepContext,
    asymmetric_target,
    nearest_embedding,
    respaced_steps,
)
from lightning_diffusion.samplers.ddim import DDIMSampler
from lightning_diffusion.samplers.dpm_solver import DPMSolverPP, logsnr_steps
from lightning_diffusion.samplers.rounding import round_to_tokens

__all__ = [
    "AncestralSampler",
    "DDIMSampler",
    "DPMSolverPP",
    "Sampler",
    "StepContext",
    "asymmetric_target",
    "logsnr_steps",
    "nearest_embedding",
    "respaced_steps",
    "round_to_tokens",
]
