"""lightning-diffusion: PyTorch Lightning plugin suite for sequence-to-sequence diffusion models."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

__all__ = ["DiffusionLM", "DiscreteDiffusionLM", "__version__"]

if TYPE_CHECKING:
    from lightning_diffusion.discrete.model import DiscreteDiffusionLM
    from lightning_diffusion.module import DiffusionLM

# Top-level names and the module each is imported from on first use.
_LAZY = {"DiffusionLM": "lightning_diffusion.module", "DiscreteDiffusionLM": "lightning_diffusion.discrete.model"}


def __getattr__(name: str) -> Any:
    """``lightning_diffusion.DiffusionLM`` / ``DiscreteDiffusionLM`` imported on first use, so that importing a
    light submodule (the ``lightning-diffusion`` command's dispatcher) does not import torch and Lightning."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
