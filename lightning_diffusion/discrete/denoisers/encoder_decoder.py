"""Encoder-decoder token denoiser (CMLM / RDM layout): encode the source once, a non-causal decoder over ``x_t``."""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

from lightning_diffusion.arguments import check_at_least
from lightning_diffusion.denoisers.encoder_decoder import TransformerEncoder
from lightning_diffusion.denoisers.layers import KVCache, TransformerLayer
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
        self._cross_memo: tuple[weakref.ref[Tensor], list[tuple[Tensor, Tensor]]] | None = None

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
        cross = self._cross_keys_values(cond)
        for i, layer in enumerate(self.layers):
            cache = None
            if cross is not None:  # a fresh cache per call: self-attention keys of this call only, cross reused
                cache = KVCache()
                cache.cross_k, cache.cross_v = cross[i]
            x = layer(x, tgt_mask, cond.hidden, cond.mask, cache=cache)
        return self.output_norm(x)

    def __getstate__(self) -> dict[str, object]:
        state = super().__getstate__()
        state["_cross_memo"] = None  # a decoding-time memo (and a weak reference): never copied or pickled
        return state

    def _cross_keys_values(self, cond: Conditioning) -> list[tuple[Tensor, Tensor]] | None:
        """Each layer's cross-attention keys/values of ``cond.hidden`` (``[B, S, heads, head_dim]`` each), projected
        once and reused while the sampler passes the same conditioning tensor at every step; only when decoding
        (eval mode, no gradient), so training is untouched. None = project in the layers as usual."""
        if self.training or torch.is_grad_enabled():
            return None
        memo = self._cross_memo
        if memo is not None and memo[0]() is cond.hidden:
            return memo[1]
        cross = []
        for layer in self.layers:
            assert layer.cross_attn is not None
            cross.append(layer.cross_attn.project_kv(cond.hidden))
        self._cross_memo = (weakref.ref(cond.hidden), cross)
        return cross


__all__ = ["EncoderDecoderTokenDenoiser"]
