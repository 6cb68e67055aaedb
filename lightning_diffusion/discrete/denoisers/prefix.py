"""Encoder-only token denoiser over ``[src ; SEP ; x_t]`` (the DiffuSeq layout for discrete diffusion)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_diffusion.arguments import check_at_least
from lightning_diffusion.denoisers.layers import TransformerLayer
from lightning_diffusion.discrete.denoisers.base import TokenDenoiser
from lightning_diffusion.types import Conditioning


class PrefixTokenDenoiser(TokenDenoiser):
    """One bidirectional transformer over the clean source, a learned separator and the corrupted target
    (DiffuSeq's partial noising, with tokens in place of latents). :meth:`encode` only embeds the source; every
    step runs the whole stack over source and target. Positions are counted per example (source ``0..|x|-1``,
    SEP at ``|x|``, targets after it), so an example's output does not depend on its batch's padding.

    Args:
        hidden_dim, num_layers, num_heads, ffn_dim, dropout: transformer shape.
        max_positions: longest ``|x| + 1 + L``.
        time_conditioning: see :class:`TokenDenoiser`.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_dim: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        ffn_dim: int = 3072,
        dropout: float = 0.1,
        max_positions: int = 512,
        time_conditioning: bool = False,
    ) -> None:
        super().__init__(vocab_size, hidden_dim, time_conditioning)
        check_at_least(
            type(self).__name__, 1, hidden_dim=hidden_dim, num_layers=num_layers, num_heads=num_heads, ffn_dim=ffn_dim,
            max_positions=max_positions,
        )  # fmt: skip
        self.max_positions = max_positions
        self.sep = nn.Parameter(torch.randn(hidden_dim) * 0.02)
        self.position_embedding = nn.Embedding(max_positions, hidden_dim)
        self.segment_embedding = nn.Embedding(2, hidden_dim)
        self.input_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(TransformerLayer(hidden_dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.output_norm = nn.LayerNorm(hidden_dim)

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Conditioning:
        """Embed the source once: ``[B, S]`` -> hidden ``[B, S, H]`` (the clean prefix of every step)."""
        return Conditioning(hidden=self.embed_tokens(src_ids), mask=src_mask)

    def hidden_states(self, x_t: Tensor, t: Tensor, cond: Conditioning, tgt_mask: Tensor | None = None) -> Tensor:
        b, length = x_t.shape
        s = cond.hidden.shape[1]
        if s + 1 + length > self.max_positions:
            raise ValueError(
                f"source ({s}) + SEP + target ({length}) needs {s + 1 + length} positions but max_positions is "
                f"{self.max_positions}; raise the denoiser's max_positions or lower the data's max lengths"
            )
        device = x_t.device
        seq = torch.cat([cond.hidden, self.sep.expand(b, 1, -1), self.embed_tokens(x_t)], dim=1)
        offsets = torch.arange(s + 1 + length, device=device)
        tgt_pos = cond.mask.sum(-1)[:, None] + offsets[None, : length + 1]
        positions = torch.cat([offsets[None, :s].expand(b, -1), tgt_pos], dim=1)
        segments = torch.cat(
            [torch.zeros(b, s + 1, dtype=torch.long, device=device), torch.ones(b, length, dtype=torch.long, device=device)], dim=1
        )
        seq = seq + self.position_embedding(positions) + self.segment_embedding(segments)
        time = self.time_features(t)
        if time is not None:
            seq = seq + time[:, None]
        seq = self.input_dropout(seq)
        target_mask = torch.ones(b, length, dtype=torch.bool, device=device) if tgt_mask is None else tgt_mask
        mask = torch.cat([cond.mask, torch.ones(b, 1, dtype=torch.bool, device=device), target_mask], dim=1)
        for layer in self.layers:
            seq = layer(seq, mask)
        return self.output_norm(seq[:, s + 1 :])


__all__ = ["PrefixTokenDenoiser"]
