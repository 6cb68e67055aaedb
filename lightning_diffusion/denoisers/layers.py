"""Transformer building blocks shared by every denoiser (and the autoregressive baseline)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_diffusion.attention import attention


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer sinusoidal features of (float) steps ``t`` ``[B]`` -> ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of ``t`` through a 2-layer SiLU MLP: ``[B]`` -> ``[B, hidden_dim]``."""

    def __init__(self, hidden_dim: int, frequency_dim: int = 128) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, 4 * hidden_dim), nn.SiLU(), nn.Linear(4 * hidden_dim, hidden_dim)
        )

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(t, self.frequency_dim))


class MultiHeadAttention(nn.Module):
    """Multi-head attention through :func:`lightning_diffusion.attention.attention`."""

    def __init__(self, hidden_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.q_proj = nn.Linear(hidden_dim, hidden_dim)
        self.kv_proj = nn.Linear(hidden_dim, 2 * hidden_dim)
        self.out_proj = nn.Linear(hidden_dim, hidden_dim)
        self.dropout = dropout

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        """``x`` ``[B, M, H]`` attends over ``context`` ``[B, N, H]`` (default ``x``) with key padding mask
        ``context_mask`` ``[B, N]`` (True = attend) -> ``[B, M, H]``."""
        context = x if context is None else context
        b, m, _ = x.shape
        q = self.q_proj(x).view(b, m, self.num_heads, self.head_dim)
        k, v = self.kv_proj(context).view(b, context.shape[1], 2, self.num_heads, self.head_dim).unbind(2)
        out = attention(q, k, v, context_mask, self.dropout if self.training else 0.0)
        return self.out_proj(out.reshape(b, m, -1))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm transformer layer: self-attention, optional cross-attention, feed-forward.

    Time conditioning is added to the input by the caller, or applied here as adaLN-Zero (DiT) when
    ``adaptive_norm`` is set: each sub-block's LayerNorm output is modulated by ``(1 + scale) * x + shift``
    and its residual gated, all from the time embedding, with the gates initialised to zero.
    """

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float = 0.1,
        cross_attention: bool = False,
        adaptive_norm: bool = False,
    ) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(hidden_dim, elementwise_affine=not adaptive_norm)
        self.self_attn = MultiHeadAttention(hidden_dim, num_heads, dropout)
        self.cross_norm = nn.LayerNorm(hidden_dim) if cross_attention else None
        self.cross_attn = MultiHeadAttention(hidden_dim, num_heads, dropout) if cross_attention else None
        self.ffn_norm = nn.LayerNorm(hidden_dim, elementwise_affine=not adaptive_norm)
        self.ffn = nn.Sequential(nn.Linear(hidden_dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, hidden_dim))
        self.dropout = nn.Dropout(dropout)
        self.modulation: nn.Module | None = None
        if adaptive_norm:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_dim, 6 * hidden_dim))
            nn.init.zeros_(self.modulation[1].weight)
            nn.init.zeros_(self.modulation[1].bias)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        time_emb: Tensor | None = None,
    ) -> Tensor:
        """``x`` ``[B, M, H]``, ``mask`` ``[B, M]`` (True = real), ``context`` ``[B, N, H]`` with
        ``context_mask`` ``[B, N]``, ``time_emb`` ``[B, H]`` (used only with ``adaptive_norm``) -> ``[B, M, H]``."""
        if self.modulation is not None:
            if time_emb is None:
                raise ValueError("adaptive_norm layers need time_emb")
            shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(time_emb)[:, None].chunk(6, dim=-1)
            h = self.self_norm(x) * (1 + scale1) + shift1
            x = x + gate1 * self.dropout(self.self_attn(h, context_mask=mask))
        else:
            x = x + self.dropout(self.self_attn(self.self_norm(x), context_mask=mask))
        if self.cross_attn is not None:
            x = x + self.dropout(self.cross_attn(self.cross_norm(x), context, context_mask))
        if self.modulation is not None:
            x = x + gate2 * self.dropout(self.ffn(self.ffn_norm(x) * (1 + scale2) + shift2))
        else:
            x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x
