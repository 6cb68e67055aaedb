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


def drop_condition(cond: Conditioning, null: Tensor | None, condition_dropout: float) -> Conditioning:
    """``cond`` with each row replaced by the null condition with probability ``condition_dropout``.

    The draw ``u ~ U[0, 1)^B`` (drop where ``u < p``) comes from torch's global RNG, which training reseeds before
    every batch (:class:`~lightning_diffusion.seeding.ReseededTraining`), so a resumed run draws the same rows. With
    ``condition_dropout == 0`` or no null condition nothing is drawn and ``cond`` is returned as it is.
    """
    if null is None or condition_dropout == 0:
        return cond
    drop = torch.rand(cond.hidden.shape[0], device=cond.hidden.device) < condition_dropout  # [B]
    return cond.with_null(null, drop)


__all__ = ["drop_condition", "null_condition_parameter"]
