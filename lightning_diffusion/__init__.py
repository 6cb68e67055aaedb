"""lightning-diffusion: PyTorch Lightning plugin suite for sequence-to-sequence diffusion models."""

from lightning_diffusion.module import DiffusionLM

__version__ = "0.1.0.dev0"

__all__ = ["DiffusionLM", "__version__"]
