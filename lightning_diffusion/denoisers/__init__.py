"""Denoisers: networks that predict clean latents ``x0`` from noisy ``z_t`` given the source."""

from lightning_diffusion.denoisers.base import Denoiser
from lightning_diffusion.denoisers.diffuseq import DiffuSeqDenoiser
from lightning_diffusion.denoisers.encoder_decoder import (
    EncoderDecoderDenoiser,
    PretrainedEncoder,
    TransformerEncoder,
)

__all__ = ["Denoiser", "DiffuSeqDenoiser", "EncoderDecoderDenoiser", "PretrainedEncoder", "TransformerEncoder"]
