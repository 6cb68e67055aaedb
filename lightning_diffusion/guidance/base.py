"""The guidance interface: steer one decode call by wrapping the model's denoiser, with no sampler change.

A :class:`Guidance` is a decoding setting (``Decoding.guidance``). For one ``generate`` call the model hands its
denoiser to :meth:`Guidance.guide_latents` (continuous family) or :meth:`Guidance.guide_tokens` (discrete family)
and gives the samplers the returned :class:`GuidedDenoiser` instead. It has the call interface the samplers use:

- continuous: ``denoiser(z_t [B, L, D], t [B], cond, tgt_mask [B, L] | None, self_cond [B, L, D] | None)
  -> x0 [B, L, D]``;
- discrete: ``denoiser(x_t [B, L], t [B], cond, tgt_mask) -> logits [B, L, V]`` and
  ``hidden_states(x_t, t, cond, tgt_mask) -> [B, L, H]`` read by ``output_logits``;

and every other attribute (``latent_dim``, ``self_conditioning``, ``embedding_table()``, ``logits()``, ``mask_id``,
``vocab_size``, ...) is the wrapped denoiser's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import Tensor

from lightning_diffusion.decoding import DecodingError


class GuidedDenoiser:
    """A denoiser wrapped for one decode call: subclasses define the guided calls; any attribute they do not
    define is read from the wrapped ``denoiser`` (so samplers see its ``latent_dim``, ``logits``, ``mask_id``, ...)."""

    def __init__(self, denoiser: Any) -> None:
        self.denoiser = denoiser

    def __getattr__(self, name: str) -> Any:
        try:
            wrapped = self.__dict__["denoiser"]
        except KeyError:  # not initialised yet (copy, unpickling): no delegation
            raise AttributeError(name) from None
        return getattr(wrapped, name)


def doubled(x: Tensor | None) -> Tensor | None:
    """``[x; x]`` along the batch (``[B, ...] -> [2B, ...]``), None stays None: one batched call for two branches."""
    return None if x is None else x.repeat(2, *([1] * (x.dim() - 1)))


class Guidance(ABC):
    """A way to steer decoding, given per call as ``Decoding.guidance``.

    Attributes:
        needs_null_condition: True when the guidance reads the model's learned null condition (a model trained
            with ``condition_dropout > 0``); asking it of another model is a ``DecodingError``.
        supports_tokens: False when the guidance is defined for the continuous family only.
    """

    needs_null_condition: bool = False
    supports_tokens: bool = True

    @property
    def calls_per_step(self) -> int:
        """Network evaluations per sampling step (per candidate): the NFE of a decoding is ``steps x`` this."""
        return 1

    @abstractmethod
    def describe(self) -> str:
        """The setting in words, e.g. ``classifier-free guidance w=2.0`` (printed with the decoding settings)."""

    @abstractmethod
    def guide_latents(self, denoiser: Any, null_condition: Tensor | None) -> Any:
        """The continuous ``denoiser`` guided (or ``denoiser`` itself when the guidance changes nothing).

        Args:
            denoiser: the model's :class:`~lightning_diffusion.denoisers.base.Denoiser`.
            null_condition: the model's learned null condition ``[H]``, or None (trained without condition dropout).
        """

    def guide_tokens(self, denoiser: Any, null_condition: Tensor | None) -> Any:
        """The discrete ``denoiser`` (a :class:`~lightning_diffusion.discrete.denoisers.base.TokenDenoiser`)
        guided; default: not supported (a :class:`DecodingError`)."""
        raise DecodingError(
            f"decoding: {self.describe()} applies to continuous (embedding-space) models only"
        )


def check_guidance(
    guidance: Guidance | None, model: str, null_condition: Tensor | None, tokens: bool
) -> None:
    """Raise a :class:`DecodingError` when ``guidance`` cannot apply to a ``model`` (its class name) of the discrete
    family (``tokens``) or continuous one, with or without a learned ``null_condition``."""
    if guidance is None:
        return
    if tokens and not guidance.supports_tokens:
        raise DecodingError(
            f"decoding: {guidance.describe()} applies to continuous (embedding-space) models only; {model} decodes tokens"
        )
    if guidance.needs_null_condition and null_condition is None:
        raise DecodingError(
            f"decoding: {guidance.describe()} needs a model trained with condition_dropout > 0 (a learned null "
            f"condition); this {model} was trained with condition_dropout 0"
        )


__all__ = ["Guidance", "GuidedDenoiser", "check_guidance", "doubled"]
