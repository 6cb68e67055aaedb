"""Classifier-free guidance (Ho & Salimans 2022, eq. 6), in x0 space (continuous) or on logits (discrete)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_diffusion.decoding import DecodingError
from lightning_diffusion.discrete.denoisers.base import TokenDenoiser
from lightning_diffusion.guidance.base import Guidance, GuidedDenoiser, doubled
from lightning_diffusion.types import Conditioning


def null_like(cond: Conditioning, null: Tensor) -> Conditioning:
    """The null condition for every row of ``cond`` (same ``[B, S]`` shapes; ``extras`` kept)."""
    return cond.with_null(null, torch.ones(cond.hidden.shape[0], dtype=torch.bool, device=cond.hidden.device))


def mix(conditional: Tensor, unconditional: Tensor, scale: float) -> Tensor:
    """``u + w (c - u)`` (Ho & Salimans eq. 6 with ``w = 1 + their w``): ``w = 1`` conditional, ``w = 0``
    unconditional, ``w > 1`` pushed further along the direction the condition adds."""
    return unconditional + scale * (conditional - unconditional)


class ClassifierFreeGuidance(Guidance):
    """``x0 = x0(z_t, null) + w (x0(z_t, c) - x0(z_t, null))`` at every step, both branches in one batched call on
    ``[cond; null]`` (``2B`` rows, so NFE is counted twice). Needs a model trained with ``condition_dropout > 0``.

    ``w = 1`` is plain conditional decoding and ``w = 0`` unconditional decoding: each skips the branch with no
    weight (one call per step, exactly the unguided result).

    Args:
        scale: the guidance weight ``w`` (>= 0; 1.5-3 typical).
    """

    needs_null_condition = True

    def __init__(self, scale: float = 2.0) -> None:
        if not scale >= 0 or scale == float("inf"):
            raise ValueError(f"ClassifierFreeGuidance: scale must be finite and >= 0, got {scale}")
        self.scale = float(scale)

    @property
    def calls_per_step(self) -> int:
        return 1 if self.scale in (0.0, 1.0) else 2

    def describe(self) -> str:
        return f"classifier-free guidance w={self.scale:g}"

    def _null(self, null_condition: Tensor | None) -> Tensor:
        if null_condition is None:
            raise DecodingError(
                "decoding: classifier-free guidance needs a model trained with condition_dropout > 0 (it has no null condition)"
            )
        return null_condition

    def guide_latents(self, denoiser: Any, null_condition: Tensor | None) -> Any:
        null = self._null(null_condition)
        return denoiser if self.scale == 1.0 else GuidedLatents(denoiser, null, self.scale)

    def guide_tokens(self, denoiser: Any, null_condition: Tensor | None) -> Any:
        null = self._null(null_condition)
        if type(denoiser).output_logits is not TokenDenoiser.output_logits:
            raise DecodingError(
                f"decoding: {type(denoiser).__name__} overrides output_logits; classifier-free guidance mixes hidden "
                "states, which equals mixing logits only for the affine tied head of TokenDenoiser"
            )
        return denoiser if self.scale == 1.0 else GuidedTokens(denoiser, null, self.scale)


class GuidedLatents(GuidedDenoiser):
    """A continuous denoiser under classifier-free guidance (see :class:`ClassifierFreeGuidance`)."""

    def __init__(self, denoiser: Any, null: Tensor, scale: float) -> None:
        super().__init__(denoiser)
        self.null = null
        self.scale = scale

    def __call__(
        self,
        z_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        tgt_mask: Tensor | None = None,
        self_cond: Tensor | None = None,
    ) -> Tensor:
        """Guided ``x0`` ``[B, L, D]``; both branches get the same ``self_cond`` (the previous guided estimate)."""
        null = null_like(cond, self.null)
        if self.scale == 0.0:
            return self.denoiser(z_t, t, null, tgt_mask, self_cond)
        x0 = self.denoiser(doubled(z_t), doubled(t), cond.concat(null), doubled(tgt_mask), doubled(self_cond))
        conditional, unconditional = x0.chunk(2)
        return mix(conditional, unconditional, self.scale)


class GuidedTokens(GuidedDenoiser):
    """A token denoiser under classifier-free guidance: logits ``l_u + w (l_c - l_u)``.

    :meth:`hidden_states` mixes the states instead, ``h_u + w (h_c - h_u)``, so samplers that apply
    ``output_logits`` to some rows only (:func:`~lightning_diffusion.discrete.samplers.base.predict_positions`) stay
    cheap. The two agree because the head is affine, ``output_logits(h) = E h + b``:
    ``E (h_u + w (h_c - h_u)) + b = l_u + w (l_c - l_u)`` (each branch's LayerNorm is inside ``hidden_states``,
    before the mix).
    """

    def __init__(self, denoiser: Any, null: Tensor, scale: float) -> None:
        super().__init__(denoiser)
        self.null = null
        self.scale = scale

    def hidden_states(
        self, x_t: Tensor, t: Tensor, cond: Conditioning, tgt_mask: Tensor | None = None
    ) -> Tensor:
        """Guided states ``[B, L, H]`` from one call on ``2B`` rows (one on the null condition when ``w = 0``)."""
        null = null_like(cond, self.null)
        if self.scale == 0.0:
            return self.denoiser.hidden_states(x_t, t, null, tgt_mask)
        hidden = self.denoiser.hidden_states(doubled(x_t), doubled(t), cond.concat(null), doubled(tgt_mask))
        conditional, unconditional = hidden.chunk(2)
        return mix(conditional, unconditional, self.scale)

    def __call__(self, x_t: Tensor, t: Tensor, cond: Conditioning, tgt_mask: Tensor | None = None) -> Tensor:
        """Guided logits ``[B, L, V]``: ``l_u + w (l_c - l_u)``, as the head of the guided states (equal: see above)."""
        return self.denoiser.output_logits(self.hidden_states(x_t, t, cond, tgt_mask))


__all__ = ["ClassifierFreeGuidance", "GuidedLatents", "GuidedTokens", "mix", "null_like"]
