"""Reading Lightning checkpoints safely and finding the model class a checkpoint names.

- :func:`read_checkpoint`: a ``.ckpt`` read with ``weights_only=True`` (tensors and plain containers only: a
  crafted file cannot run code), with a clear error otherwise.
- :func:`checkpoint_subclass`: the already-imported class a CLI checkpoint's ``_class_path`` names, so
  ``DiffusionLM.load_from_checkpoint`` on a subclass's checkpoint builds that subclass.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_KEY = "lightning_diffusion"  # the library's own entry in a checkpoint (tokenizer fingerprint, seed)


class CheckpointError(ValueError):
    """A checkpoint or export directory that cannot be loaded; the message names the file and the problem."""


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Read a Lightning checkpoint with ``torch.load(weights_only=True)``: only tensors and primitive
    containers are unpickled, so a crafted file cannot execute code while loading. ``mmap`` maps the tensors
    instead of reading them (a cheap check that the file is complete and readable)."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"{file}: no such checkpoint file")
    try:
        checkpoint = torch.load(file, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{file}: refused to load: it holds objects other than tensors and plain containers, and "
            f"checkpoints are loaded weights-only (nothing else is unpickled). Details: {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{file}: not a readable checkpoint, truncated or not written by fit ({reason})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{file}: not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def checkpoint_subclass(path: str | os.PathLike[str], cls: type) -> type | None:
    """The already-imported subclass of ``cls`` named by a CLI checkpoint's ``_class_path`` (None if none)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # let Lightning's own loading report the problem
        return None
    class_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path") if isinstance(checkpoint, dict) else None
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module_name, _, name = class_path.rpartition(".")
    module = sys.modules.get(module_name)
    target = getattr(module, name, None) if module is not None else None
    return target if isinstance(target, type) and issubclass(target, cls) else None


__all__ = ["CHECKPOINT_KEY", "CheckpointError", "checkpoint_subclass", "read_checkpoint"]
