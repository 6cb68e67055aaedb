"""DiffuSeq's denoiser: one transformer over ``[src ; SEP ; z_t]`` with partial noising."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_diffusion.arguments import check_at_least
from lightning_diffusion.denoisers.base import Denoiser, DenoiserOutput
from lightning_diffusion.denoisers.layers import TimestepEmbedding, TransformerLayer
from lightning_diffusion.types import Conditioning


def _up_projection(in_dim: int, hidden_dim: int) -> nn.Module:
    """DiffuSeq's ``input_up_proj``: Linear-Tanh-Linear from the latent width to the model width."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, hidden_dim))


class DiffuSeqDenoiser(Denoiser):
    """Encoder-only transformer over the concatenation ``[Emb(x) ; SEP ; z_t]`` (DiffuSeq, Gong et al. 2023).

    Partial noising holds by construction: the source never enters ``z_t``; it is embedded once in
    :meth:`encode` and re-imposed clean, as the prefix of the sequence, at every step. Positions are counted
    per example (source tokens ``0..|x|-1``, SEP at ``|x|``, targets after it), so an example's output does not
    depend on how much padding its batch has.

    Args:
        hidden_dim: transformer width ``H``; ``latent_dim`` (``D``) is the diffused width (DiffuSeq: 128).
        num_layers, num_heads, ffn_dim, dropout: transformer shape (DiffuSeq: 12 layers, 768, 12 heads).
        max_positions: longest ``|x| + 1 + L`` the position table covers.
        shared_projection: the source goes through the same up-projection as the noisy target (the official
            DiffuSeq: one ``input_up_proj`` for the whole row) instead of a projection of its own; with
            self-conditioning the source fills the self-conditioning slot with zeros.
        post_norm: post-LayerNorm layers and no final LayerNorm (the official DiffuSeq's BERT encoder); default
            pre-LayerNorm.
        See :class:`Denoiser` for the rest.

    With ``with_source=True`` (and no forward hook installed) :meth:`predict` also returns the network's output at
    the source positions (``source_x0``), which
    :class:`~lightning_diffusion.losses.SourceMSE` scores against the source embeddings (the official DiffuSeq's
    MSE covers the clean source too: the model practises copying its input).
    """

    returns_source_output = True

    def __init__(
        self,
        vocab_size: int,
        latent_dim: int = 128,
        hidden_dim: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        ffn_dim: int = 3072,
        dropout: float = 0.1,
        max_positions: int = 512,
        embedding_norm: bool = False,
        embedding_scale: float | None = None,
        self_conditioning: bool = False,
        shared_projection: bool = False,
        post_norm: bool = False,
    ) -> None:
        super().__init__(vocab_size, latent_dim, embedding_norm, embedding_scale, self_conditioning)
        check_at_least(
            type(self).__name__, 1, hidden_dim=hidden_dim, num_layers=num_layers, num_heads=num_heads, ffn_dim=ffn_dim, max_positions=max_positions
        )
        self.hidden_dim = hidden_dim
        self.max_positions = max_positions
        self.source_proj = None if shared_projection else _up_projection(latent_dim, hidden_dim)
        self.input_proj = _up_projection(latent_dim * (2 if self_conditioning else 1), hidden_dim)
        self.sep = nn.Parameter(torch.randn(hidden_dim) * 0.02)
        self.position_embedding = nn.Embedding(max_positions, hidden_dim)
        self.segment_embedding = nn.Embedding(2, hidden_dim)
        self.time_embedding = TimestepEmbedding(hidden_dim)
        self.input_norm = nn.LayerNorm(hidden_dim)
        self.input_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(hidden_dim, num_heads, ffn_dim, dropout, post_norm=post_norm) for _ in range(num_layers)
        )
        self.output_norm = nn.Identity() if post_norm else nn.LayerNorm(hidden_dim)
        self.output_proj = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, latent_dim))

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Conditioning:
        """Embed the source once: ``[B, S]`` -> hidden ``[B, S, H]`` (the clean prefix of every step)."""
        emb = self.embed(src_ids)
        if self.source_proj is not None:
            return Conditioning(hidden=self.source_proj(emb), mask=src_mask)
        if self.self_conditioning:
            emb = torch.cat([emb, torch.zeros_like(emb)], dim=-1)
        return Conditioning(hidden=self.input_proj(emb), mask=src_mask)

    def forward(
        self,
        z_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        tgt_mask: Tensor | None = None,
        self_cond: Tensor | None = None,
    ) -> Tensor:
        s = cond.hidden.shape[1]
        return self.output_proj(self.output_norm(self._transform(z_t, t, cond, tgt_mask, self_cond)[:, s + 1 :]))

    def predict(
        self,
        z_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        tgt_mask: Tensor | None = None,
        self_cond: Tensor | None = None,
        with_source: bool = False,
    ) -> DenoiserOutput:
        """The training pass: ``x0_hat`` ``[B, L, D]`` and, ``with_source``, the output at the source positions
        ``source_x0`` ``[B, S, D]`` from the same run of the transformer. A forward hook (skip preconditioning)
        acts on the target output only, so with one installed the default pass runs and ``source_x0`` is None."""
        if not with_source or self._forward_hooks or self._forward_pre_hooks:
            return super().predict(z_t, t, cond, tgt_mask, self_cond)
        s = cond.hidden.shape[1]
        out = self.output_proj(self.output_norm(self._transform(z_t, t, cond, tgt_mask, self_cond)))
        return DenoiserOutput(x0=out[:, s + 1 :], source_x0=out[:, :s])

    def _transform(
        self, z_t: Tensor, t: Tensor, cond: Conditioning, tgt_mask: Tensor | None, self_cond: Tensor | None
    ) -> Tensor:
        """The transformer over ``[src ; SEP ; z_t]``: hidden states ``[B, S + 1 + L, H]`` (before the output norm)."""
        b, length, _ = z_t.shape
        src_len = cond.mask.sum(-1)  # [B]
        if self.self_conditioning:
            z_t = torch.cat([z_t, torch.zeros_like(z_t) if self_cond is None else self_cond], dim=-1)
        target = self.input_proj(z_t)  # [B, L, H]
        s = cond.hidden.shape[1]
        seq = torch.cat([cond.hidden, self.sep.expand(b, 1, -1), target], dim=1)  # [B, S + 1 + L, H]

        if s + 1 + length > self.max_positions:
            raise ValueError(
                f"source ({s}) + SEP + target ({length}) needs {s + 1 + length} positions but max_positions is "
                f"{self.max_positions}; raise the denoiser's max_positions or lower the data's max lengths"
            )
        offsets = torch.arange(s + 1 + length, device=z_t.device)
        tgt_pos = src_len[:, None] + offsets[None, : length + 1]  # SEP, then targets, right after the real source
        positions = torch.cat([offsets[None, :s].expand(b, -1), tgt_pos], dim=1)
        segments = torch.cat(
            [torch.zeros(b, s + 1, dtype=torch.long, device=z_t.device), torch.ones(b, length, dtype=torch.long, device=z_t.device)],
            dim=1,
        )
        seq = seq + self.position_embedding(positions) + self.segment_embedding(segments)
        seq = seq + self.time_embedding(t)[:, None]
        seq = self.input_dropout(self.input_norm(seq))

        ones = torch.ones(b, 1, dtype=torch.bool, device=z_t.device)
        target_mask = torch.ones(b, length, dtype=torch.bool, device=z_t.device) if tgt_mask is None else tgt_mask
        mask = torch.cat([cond.mask, ones, target_mask], dim=1)
        for layer in self.layers:
            seq = layer(seq, mask)
        return seq
