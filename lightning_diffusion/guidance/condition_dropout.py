"""Condition dropout in training, for classifier-free guidance (Ho & Salimans 2022, Alg. 1).

With probability ``p`` an example's :class:`~lightning_diffusion.types.Conditioning` is replaced by a learned null
condition (:meth:`Conditioning.with_null`), so one network learns both ``x0(z_t, c)`` and ``x0(z_t, null)``. It
works for every denoiser through ``Conditioning.hidden`` / ``Conditioning.mask`` alone; ``extras`` are kept.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_diffusion.types import Conditioning


def null_condition_parameter(condition_dropout: float, hidden_dim: int) -> nn.Parameter | None:
    """The learned null condition ``[H]`` (zeros at start, no random draw) when ``condition_dropout > 0``, else None
    (so models trained without it keep their exact parameter set and load strictly)."""
    if not 0.0 <= condition_dropout <= 1.0:
        raise ValueError(f"condition_dropout must be in [0, 1], got {condition_dropout}")
    return nn.Parameter(torch.zeros(hidden_dim)) if condition_dropout > 0 else None


def dropped_rows(batch_size: int, null: Tensor | None, condition_dropout: float, device: torch.device) -> Tensor | None:
    """The rows ``[B]`` (bool) whose conditioning training replaces by the null condition: ``u < p`` for
    ``u ~ U[0, 1)^B`` from torch's global RNG, which training reseeds before every batch
    (:class:`~lightning_diffusion.seeding.ReseededTraining`), so a resumed run draws the same rows. None (and nothing
    drawn) when ``condition_dropout == 0`` or there is no null condition."""
    if null is None or condition_dropout == 0:
        return None
    return torch.rand(batch_size, device=device) < condition_dropout


def drop_condition(cond: Conditioning, null: Tensor | None, condition_dropout: float) -> Conditioning:
    """``cond`` with each row replaced by the null condition with probability ``condition_dropout``
    (:func:`dropped_rows`); ``cond`` itself when nothing is drawn."""
    drop = dropped_rows(cond.hidden.shape[0], null, condition_dropout, cond.hidden.device)
    if drop is None or null is None:
        return cond
    return cond.with_null(null, drop)


__all__ = ["drop_condition", "dropped_rows", "null_condition_parameter"]
