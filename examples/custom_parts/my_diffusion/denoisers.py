"""A denoiser subclass: the library's encoder-decoder denoiser with a gated skip from the noisy input."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_diffusion.denoisers import EncoderDecoderDenoiser
from lightning_diffusion.types import Conditioning


class GatedSkipDenoiser(EncoderDecoderDenoiser):
    """:class:`~lightning_diffusion.denoisers.EncoderDecoderDenoiser` whose estimate mixes the network's output
    with the noisy input it was given, through a gate that depends on the step and on the source:

    ``x0_hat = g * z_t + (1 - g) * f(z_t, t, x)``, ``g = sigmoid(W [time(t) ; pool(x)] + b)`` ``[B, 1, D]``

    At low noise ``z_t`` is already close to ``z0`` and copying it is nearly right (the idea behind the ``c_skip``
    preconditioning of Karras et al. 2022, EDM), at high noise the network has to do the work; the gate learns
    where between the two each step lies, per latent channel. ``W`` starts at zero and ``b`` at ``gate_bias``,
    so training starts from ``g = sigmoid(gate_bias)`` everywhere.

    ``pool(x)`` is the masked mean of the encoder states, computed once per source in :meth:`encode` and
    carried in :attr:`Conditioning.extras` (so it is repeated with the rest when a sampler decodes several
    candidates per source).

    The parent's arguments are restated rather than passed as ``**kwargs`` so that the signature documents them
    (a recipe accepts either: jsonargparse follows ``**kwargs`` into ``super().__init__``).

    Args:
        gate_bias: initial gate logit ``b`` (-2: the skip starts with weight 0.12).
        See :class:`~lightning_diffusion.denoisers.EncoderDecoderDenoiser` for the rest; ``vocab_size`` is filled
        in by :class:`~lightning_diffusion.DiffusionLM` (a recipe leaves it out).
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
        embedding_norm: bool = False,
        embedding_scale: float | None = None,
        self_conditioning: bool = False,
        adaptive_norm: bool = False,
        pretrained_encoder: str | None = None,
        gate_bias: float = -2.0,
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
        self.gate = nn.Linear(2 * hidden_dim, latent_dim)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, gate_bias)

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Conditioning:
        """``[B, S]`` ids and mask -> the parent's conditioning (hidden ``[B, S, H]``) plus ``extras["pooled"]``
        ``[B, H]``, the masked mean of the encoder states."""
        cond = super().encode(src_ids, src_mask)
        mask = src_mask.unsqueeze(-1).to(cond.hidden.dtype)  # [B, S, 1]
        pooled = (cond.hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # [B, H]
        cond.extras["pooled"] = pooled
        return cond

    def skip_gate(self, t: Tensor, cond: Conditioning) -> Tensor:
        """The gate ``g`` in ``(0, 1)``: steps ``[B]`` and conditioning -> ``[B, 1, D]``."""
        features = torch.cat([self.time_embedding(t), cond.extras["pooled"]], dim=-1)  # [B, 2H]
        return torch.sigmoid(self.gate(features)).unsqueeze(1)

    def forward(
        self,
        z_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        tgt_mask: Tensor | None = None,
        self_cond: Tensor | None = None,
    ) -> Tensor:
        """``z_t`` ``[B, L, D]``, ``t`` ``[B]`` -> ``x0_hat`` ``[B, L, D]`` (same contract as the parent)."""
        network = super().forward(z_t, t, cond, tgt_mask, self_cond)  # [B, L, D]
        g = self.skip_gate(t, cond)  # [B, 1, D]
        return g * z_t + (1.0 - g) * network
