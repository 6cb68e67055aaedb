"""Encoder-decoder denoiser (SeqDiffuSeq, Difformer): encode the source once, denoise with cross-attention."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_diffusion.arguments import check_at_least
from lightning_diffusion.denoisers.base import Denoiser
from lightning_diffusion.denoisers.layers import TimestepEmbedding, TransformerLayer
from lightning_diffusion.types import Conditioning


class TransformerEncoder(nn.Module):
    """Token embedding + learned positions + pre-LN transformer layers: ids ``[B, S]`` -> ``[B, S, H]``."""

    def __init__(
        self, vocab_size: int, hidden_dim: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float, max_positions: int
    ) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, hidden_dim)
        nn.init.normal_(self.token_embedding.weight, std=hidden_dim**-0.5)
        self.position_embedding = nn.Embedding(max_positions, hidden_dim)
        self.scale = hidden_dim**0.5
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(TransformerLayer(hidden_dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.max_positions = max_positions

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        if ids.shape[1] > self.max_positions:
            raise ValueError(f"source length {ids.shape[1]} exceeds the encoder's max_positions {self.max_positions}")
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.dropout(self.token_embedding(ids) * self.scale + self.position_embedding(positions))
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class PretrainedEncoder(nn.Module):
    """A local Hugging Face ``transformers`` encoder (e.g. a BERT directory) as the source encoder, projected
    to the denoiser width (as DiffusionBERT / LD4LG start from pretrained models). Loads from disk only.

    The data module must use the same tokenizer (``data.tokenizer: <the same directory>``).
    """

    def __init__(self, path: str, hidden_dim: int) -> None:
        super().__init__()
        from transformers import AutoModel

        if not Path(path).is_dir():
            raise FileNotFoundError(f"pretrained encoder directory {path!r} does not exist (only local paths are loaded)")
        self.model = AutoModel.from_pretrained(path, local_files_only=True)
        width = int(self.model.config.hidden_size)
        self.proj = nn.Identity() if width == hidden_dim else nn.Linear(width, hidden_dim)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        out = self.model(input_ids=ids, attention_mask=mask.long())
        return self.proj(out.last_hidden_state)


class EncoderDecoderDenoiser(Denoiser):
    """Transformer encoder over the source, run once per source (:meth:`encode`); a transformer decoder with
    cross-attention over noisy latents, run at every step.

    Args:
        hidden_dim: model width ``H``; ``latent_dim`` (``D``) is the diffused width (Difformer: 512 vs 128).
        encoder_layers, decoder_layers, num_heads, ffn_dim, dropout: transformer shape (6 + 6, 8 heads, 2048).
        max_positions: longest source and longest target.
        adaptive_norm: time conditioning as adaLN-Zero (DiT) in every decoder layer instead of adding the
            time embedding to the decoder input.
        pretrained_encoder: a local ``transformers`` model directory to use as the encoder (else a fresh one).
        See :class:`Denoiser` for the rest (``embedding_norm``, ``embedding_scale``, ``self_conditioning``).
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
    ) -> None:
        super().__init__(vocab_size, latent_dim, embedding_norm, embedding_scale, self_conditioning)
        check_at_least(
            type(self).__name__,
            1,
            hidden_dim=hidden_dim,
            encoder_layers=encoder_layers,
            decoder_layers=decoder_layers,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            max_positions=max_positions,
        )
        self.hidden_dim = hidden_dim
        self.max_positions = max_positions
        self.encoder: nn.Module
        if pretrained_encoder is not None:
            self.encoder = PretrainedEncoder(pretrained_encoder, hidden_dim)
        else:
            self.encoder = TransformerEncoder(vocab_size, hidden_dim, encoder_layers, num_heads, ffn_dim, dropout, max_positions)
        in_dim = latent_dim * (2 if self_conditioning else 1)
        self.input_proj = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, hidden_dim))
        self.position_embedding = nn.Embedding(max_positions, hidden_dim)
        self.time_embedding = TimestepEmbedding(hidden_dim)
        self.adaptive_norm = adaptive_norm
        self.input_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(hidden_dim, num_heads, ffn_dim, dropout, cross_attention=True, adaptive_norm=adaptive_norm)
            for _ in range(decoder_layers)
        )
        self.output_norm = nn.LayerNorm(hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, latent_dim)

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Conditioning:
        """Run the encoder once: ``[B, S]`` -> hidden ``[B, S, H]``."""
        return Conditioning(hidden=self.encoder(src_ids, src_mask), mask=src_mask)

    def forward(
        self,
        z_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        tgt_mask: Tensor | None = None,
        self_cond: Tensor | None = None,
    ) -> Tensor:
        """``x0_hat = output_proj(decoder states)`` ``[B, L, D]``; see :meth:`Denoiser.forward`."""
        return self.output_proj(self.decoder_states(z_t, t, cond, tgt_mask, self_cond))

    def decoder_states(
        self,
        z_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        tgt_mask: Tensor | None = None,
        self_cond: Tensor | None = None,
    ) -> Tensor:
        """The decoder's final (normalised) states ``[B, L, H]``, before any output head; arguments as :meth:`forward`."""
        length = z_t.shape[1]
        if length > self.max_positions:
            raise ValueError(f"target length {length} exceeds the decoder's max_positions {self.max_positions}")
        if self.self_conditioning:
            z_t = torch.cat([z_t, torch.zeros_like(z_t) if self_cond is None else self_cond], dim=-1)
        time = self.time_embedding(t)  # [B, H]
        x = self.input_proj(z_t) + self.position_embedding(torch.arange(length, device=z_t.device))
        if not self.adaptive_norm:
            x = x + time[:, None]
        x = self.input_dropout(x)
        for layer in self.layers:
            x = layer(x, tgt_mask, cond.hidden, cond.mask, time)
        return self.output_norm(x)
