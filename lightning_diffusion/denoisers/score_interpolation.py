"""CDCD's score interpolation (Dieleman et al. 2022, "Continuous diffusion for categorical data", section 3).

The network predicts a distribution over the clean token at every position; the ``x0`` estimate is the expected
embedding under it::

    p(x0 = e_w | z_t, t) = softmax(logits)_w                      logits [B, L, V] from the decoder
    x0_hat = E_p[e_w] = softmax(logits) @ E                      E = embedding_table() [V, D]    (CDCD eq. 4-5)

so the score ``(sqrt(abar) x0_hat - z_t) / (1 - abar)`` is the probability-weighted mix of the per-token scores,
and every sampler that asks for ``x0`` (DDIM, ancestral, ...) works unchanged. Training uses cross-entropy on
the logits (:class:`~lightning_diffusion.losses.ScoreInterpolationCE`), which :meth:`predict` exposes.

Input scaling: CDCD is variance-exploding, ``z = x + sigma eps``, and feeds the network ``z / sqrt(sigma^2 + 1)``
(with unit-variance embedding components). With ``abar = 1 / (1 + sigma^2)`` that is exactly the VP input
``sqrt(abar) x + sqrt(1 - abar) eps`` this library diffuses, so no extra scaling is applied; it needs embedding
components of unit RMS, which ``normalize_embeddings`` (CDCD's L2 normalisation, to norm ``sqrt(D)``) guarantees,
and a training noise factor of 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_diffusion.denoisers.base import DenoiserOutput
from lightning_diffusion.denoisers.encoder_decoder import EncoderDecoderDenoiser
from lightning_diffusion.types import Conditioning


class ScoreInterpolationDenoiser(EncoderDecoderDenoiser):
    """Encoder-decoder denoiser with a token head: ``x0_hat = softmax(logits) @ E`` (CDCD's score interpolation).

    The decoder is :class:`EncoderDecoderDenoiser`'s; its latent output projection is replaced by an (untied)
    linear head to ``V`` logits. :meth:`forward` returns ``x0_hat`` ``[B, L, D]`` (what samplers call);
    :meth:`predict` returns it with the logits ``[B, L, V]`` (what training's cross-entropy needs).

    Args:
        normalize_embeddings: L2-normalise every embedding row to norm ``sqrt(D)`` (unit RMS per component), as
            CDCD does so the jointly learned embeddings cannot grow to escape the noise. Applied before
            ``embedding_norm`` / ``embedding_scale`` (leave those off with it). With it, rounding by the tied
            head's dot product is rounding to the nearest embedding.
        See :class:`EncoderDecoderDenoiser` for the rest.

    Not for use with :class:`~lightning_diffusion.preconditioning.SkipPreconditioning` (a forward hook): its
    skip term would move ``x0`` off the embeddings' convex hull, and :meth:`predict` does not run hooks.
    """

    def __init__(
        self,
        vocab_size: int,
        latent_dim: int = 128,
        hidden_dim: int = 512,
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        max_positions: int = 512,
        normalize_embeddings: bool = True,
        embedding_norm: bool = False,
        embedding_scale: float | None = None,
        self_conditioning: bool = False,
        adaptive_norm: bool = False,
        pretrained_encoder: str | None = None,
    ) -> None:
        super().__init__(
            vocab_size,
            latent_dim=latent_dim,
            hidden_dim=hidden_dim,
            encoder_layers=encoder_layers,
            decoder_layers=decoder_layers,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            dropout=dropout,
            max_positions=max_positions,
            embedding_norm=embedding_norm,
            embedding_scale=embedding_scale,
            self_conditioning=self_conditioning,
            adaptive_norm=adaptive_norm,
            pretrained_encoder=pretrained_encoder,
        )
        self.normalize_embeddings = normalize_embeddings
        # x0 comes from the token head: drop the latent head (no idle parameters under DDP)
        del self.output_proj
        self.token_head = nn.Linear(hidden_dim, vocab_size)

    def _normalize(self, emb: Tensor) -> Tensor:
        """``e -> sqrt(D) e / ||e||`` (CDCD's L2 normalisation) when enabled, then the base's norm / scale."""
        if self.normalize_embeddings:
            emb = F.normalize(emb, dim=-1) * math.sqrt(self.latent_dim)
        return super()._normalize(emb)

    def token_logits(
        self,
        z_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        tgt_mask: Tensor | None = None,
        self_cond: Tensor | None = None,
    ) -> Tensor:
        """Logits of the clean token ``[B, L, V]``: ``token_head(decoder states)``; arguments as :meth:`forward`."""
        return self.token_head(self.decoder_states(z_t, t, cond, tgt_mask, self_cond))

    def interpolate(self, logits: Tensor) -> Tensor:
        """Score interpolation ``x0_hat = softmax(logits) @ E``: ``[B, L, V]`` -> ``[B, L, D]`` (CDCD eq. 4-5).

        The softmax runs in float32, so the estimate is a convex combination of embedding rows under any autocast.
        """
        table = self.embedding_table()
        probs = torch.softmax(logits.float(), dim=-1).to(table.dtype)
        return probs @ table

    def forward(
        self,
        z_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        tgt_mask: Tensor | None = None,
        self_cond: Tensor | None = None,
    ) -> Tensor:
        """``x0_hat`` ``[B, L, D]``, the expected embedding; see :meth:`Denoiser.forward`."""
        return self.interpolate(self.token_logits(z_t, t, cond, tgt_mask, self_cond))

    def predict(
        self,
        z_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        tgt_mask: Tensor | None = None,
        self_cond: Tensor | None = None,
        with_source: bool = False,
    ) -> DenoiserOutput:
        """``x0_hat`` ``[B, L, D]`` and the logits ``[B, L, V]`` it interpolates, from one network pass (no source
        output: the source is encoded apart)."""
        if self._forward_hooks:
            raise ValueError(
                "ScoreInterpolationDenoiser takes no forward hooks (e.g. SkipPreconditioning): x0 is the expected "
                "embedding under its logits; leave model.preconditioning unset"
            )
        logits = self.token_logits(z_t, t, cond, tgt_mask, self_cond)
        return DenoiserOutput(x0=self.interpolate(logits), logits=logits)


__all__ = ["ScoreInterpolationDenoiser"]
