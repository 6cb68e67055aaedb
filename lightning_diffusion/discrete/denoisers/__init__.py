"""Token denoisers of discrete diffusion: encoder-decoder and the encoder-only prefix (DiffuSeq) layout."""

from lightning_diffusion.discrete.denoisers.base import TokenDenoiser
from lightning_diffusion.discrete.denoisers.encoder_decoder import EncoderDecoderTokenDenoiser
from lightning_diffusion.discrete.denoisers.prefix import PrefixTokenDenoiser

__all__ = ["EncoderDecoderTokenDenoiser", "PrefixTokenDenoiser", "TokenDenoiser"]
