"""Denoisers: networks that predict clean latents ``x0`` from noisy ``z_t`` given the source."""

from lightning_diffusion.denoisers.base import Denoiser, DenoiserOutput
from lightning_diffusion.denoisers.diffuseq import DiffuSeqDenoiser
from lightning_diffusion.denoisers.encoder_decoder import (
    EncoderDecoderDenoiser,
    PretrainedEncoder,
    TransformerEncoder,
)
from lightning_diffusion.denoisers.score_interpolation import ScoreInterpolationDenoiser

__all__ = [
    "Denoiser",
    "DenoiserOutput",
    "DiffuSeqDenoiser",
    "EncoderDecoderDenoiser",
    "PretrainedEncoder",
    "ScoreInterpolationDenoiser",
    "TransformerEncoder",
]
