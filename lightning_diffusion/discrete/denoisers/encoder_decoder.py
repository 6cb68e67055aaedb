"""Encoder-decoder token denoiser (CMLM / RDM layout): encode the source once, a non-causal decoder over ``x_t``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_diffusion.arguments import check_at_least
from lightning_diffusion.denoisers.encoder_decoder import TransformerEncoder
from lightning_diffusion.denoisers.layers import TransformerLayer
from lightning_diffusion.discrete.denoisers.base import TokenDenoiser
from lightning_diffusion.types import Conditioning


class EncoderDecoderTokenDenoiser(TokenDenoiser):
    """Transformer encoder over the source (:meth:`encode`, once per source for the whole sampling loop) and a
    transformer decoder with cross-attention over the corrupted target, no causal mask (the blocks of the
    autoregressive baseline and the continuous encoder-decoder denoiser). Source, target and output share the
    token embedding.

    Args:
        hidden_dim, encoder_layers, decoder_layers, num_heads, ffn_dim, dropout: transformer shape (RDM on IWSLT:
            512, 6 + 6, 4 heads, 1024; on WMT: 512, 6 + 6, 8 heads, 2048).
        max_positions: longest source and longest target.
        time_conditioning: see :class:`TokenDenoiser`.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_dim: int = 512,
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        max_positions: int = 512,
        time_conditioning: bool = False,
    ) -> None:
        super().__init__(vocab_size, hidden_dim, time_conditioning)
        check_at_least(
            type(self).__name__, 1, hidden_dim=hidden_dim, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
            num_heads=num_heads, ffn_dim=ffn_dim, max_positions=max_positions,
        )  # fmt: skip
        self.max_positions = max_positions
        self.encoder = TransformerEncoder(vocab_size, hidden_dim, encoder_layers, num_heads, ffn_dim, dropout, max_positions)
        self.encoder.token_embedding = self.token_embedding  # shared: one vocabulary for source and target
        self.position_embedding = nn.Embedding(max_positions, hidden_dim)
        self.input_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(hidden_dim, num_heads, ffn_dim, dropout, cross_attention=True) for _ in range(decoder_layers)
        )
        self.output_norm = nn.LayerNorm(hidden_dim)

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Conditioning:
        """Run the encoder once: ``[B, S]`` -> hidden ``[B, S, H]``."""
        return Conditioning(hidden=self.encoder(src_ids, src_mask), mask=src_mask)

    def hidden_states(self, x_t: Tensor, t: Tensor, cond: Conditioning, tgt_mask: Tensor | None = None) -> Tensor:
        length = x_t.shape[1]
        if length > self.max_positions:
            raise ValueError(f"target length {length} exceeds the decoder's max_positions {self.max_positions}")
        x = self.embed_tokens(x_t) + self.position_embedding(torch.arange(length, device=x_t.device))
        time = self.time_features(t)
        if time is not None:
            x = x + time[:, None]
        x = self.input_dropout(x)
        for layer in self.layers:
            x = layer(x, tgt_mask, cond.hidden, cond.mask)
        return self.output_norm(x)


__all__ = ["EncoderDecoderTokenDenoiser"]
