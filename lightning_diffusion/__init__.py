"""lightning-diffusion: PyTorch Lightning plugin suite for sequence-to-sequence diffusion models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

__all__ = ["DiffusionLM", "__version__"]

if TYPE_CHECKING:
    from lightning_diffusion.module import DiffusionLM


def __getattr__(name: str) -> Any:
    """``lightning_diffusion.DiffusionLM`` imported on first use, so that importing a light submodule (the
    ``lightning-diffusion`` command's dispatcher) does not import torch and Lightning."""
    if name == "DiffusionLM":
        from lightning_diffusion.module import DiffusionLM

        return DiffusionLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
