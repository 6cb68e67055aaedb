"""Transformer building blocks shared by every denoiser (and the autoregressive baseline)."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass
class KVCache:
    """Projected keys and values of one :class:`TransformerLayer`, kept across incremental decoding steps.

    Attributes:
        self_k, self_v: ``[B, N, heads, head_dim]`` self-attention keys/values of the ``N`` positions decoded
            so far; each step appends its own (None before the first step).
        cross_k, cross_v: ``[B, S, heads, head_dim]`` cross-attention keys/values of the encoder output,
            projected once per source (None until the first step, or filled by
            :meth:`MultiHeadAttention.project_kv`).
    """

    self_k: Tensor | None = None
    self_v: Tensor | None = None
    cross_k: Tensor | None = None
    cross_v: Tensor | None = None

    def reorder(self, indices: Tensor, cross: bool = True) -> KVCache:
        """Keep rows ``indices`` ``[B']`` (long) in this order, in place (beam search: the beams each new beam
        continues; dropping finished sources). ``cross=False`` leaves the cross-attention keys/values alone,
        which is right when every row keeps its source (beams of one source share them). Returns ``self``."""
        self.self_k = None if self.self_k is None else self.self_k.index_select(0, indices)
        self.self_v = None if self.self_v is None else self.self_v.index_select(0, indices)
        if cross:
            self.cross_k = None if self.cross_k is None else self.cross_k.index_select(0, indices)
            self.cross_v = None if self.cross_v is None else self.cross_v.index_select(0, indices)
        return self

    @property
    def length(self) -> int:
        """Positions cached for self-attention so far."""
        return 0 if self.self_k is None else self.self_k.shape[1]


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

    def project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of ``context`` ``[B, N, H]`` -> two ``[B, N, heads, head_dim]``."""
        b, n, _ = context.shape
        k, v = self.kv_proj(context).view(b, n, 2, self.num_heads, self.head_dim).unbind(2)
        return k, v

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
    ) -> Tensor:
        """``x`` ``[B, M, H]`` attends over ``context`` ``[B, N, H]`` (default ``x``) with key padding mask
        ``context_mask`` ``[B, N]`` (True = attend) -> ``[B, M, H]``.

        ``causal``: position ``i`` of ``x`` attends only keys up to its own position (aligned to the end of
        the keys when a cache holds earlier positions). With a ``cache``, self-attention (``context`` None)
        appends this call's keys/values to ``cache.self_k/self_v`` and attends over all of them (then
        ``context_mask``, if given, covers all ``N`` cached positions); cross-attention projects ``context``
        into ``cache.cross_k/cross_v`` on the first call and reuses them afterwards (``context`` is then only
        read for its presence).
        """
        b, m, _ = x.shape
        q = self.q_proj(x).view(b, m, self.num_heads, self.head_dim)
        if cache is None:
            k, v = self.project_kv(x if context is None else context)
        elif context is None:
            k, v = self.project_kv(x)
            if cache.self_k is not None and cache.self_v is not None:
                k = torch.cat([cache.self_k, k], dim=1)
                v = torch.cat([cache.self_v, v], dim=1)
            cache.self_k, cache.self_v = k, v
        else:
            if cache.cross_k is None or cache.cross_v is None:
                cache.cross_k, cache.cross_v = self.project_kv(context)
            k, v = cache.cross_k, cache.cross_v
        out = attention(q, k, v, context_mask, self.dropout if self.training else 0.0, causal=causal)
        return self.out_proj(out.reshape(b, m, -1))


class TransformerLayer(nn.Module):
    """Transformer layer: self-attention, optional cross-attention, feed-forward; pre-LayerNorm by default,
    post-LayerNorm (``x = LN(x + sublayer(x))``, BERT / the original Transformer) with ``post_norm``.

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
        post_norm: bool = False,
    ) -> None:
        super().__init__()
        if post_norm and adaptive_norm:
            raise ValueError("TransformerLayer: post_norm and adaptive_norm cannot be combined (adaLN modulates a pre-norm)")
        self.post_norm = post_norm
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
        causal: bool = False,
        cache: KVCache | None = None,
    ) -> Tensor:
        """``x`` ``[B, M, H]``, ``mask`` ``[B, M]`` (True = real), ``context`` ``[B, N, H]`` with
        ``context_mask`` ``[B, N]``, ``time_emb`` ``[B, H]`` (used only with ``adaptive_norm``) -> ``[B, M, H]``.

        ``causal`` makes the self-attention causal; ``cache`` (:class:`KVCache`) keeps this layer's
        self-attention keys/values across incremental decoding calls (``x`` is then the newest positions and
        ``mask``, if given, covers every cached position) and its cross-attention keys/values across calls.
        """
        if self.modulation is not None:
            if time_emb is None:
                raise ValueError("adaptive_norm layers need time_emb")
            shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(time_emb)[:, None].chunk(6, dim=-1)
            h = self.self_norm(x) * (1 + scale1) + shift1
            x = x + gate1 * self.dropout(self.self_attn(h, context_mask=mask, causal=causal, cache=cache))
        elif self.post_norm:
            x = self.self_norm(x + self.dropout(self.self_attn(x, context_mask=mask, causal=causal, cache=cache)))
        else:
            x = x + self.dropout(self.self_attn(self.self_norm(x), context_mask=mask, causal=causal, cache=cache))
        if self.cross_attn is not None:
            if context is None and cache is not None:
                raise ValueError("a cached cross-attention layer needs its context (the encoder output)")
            if self.post_norm:
                x = self.cross_norm(x + self.dropout(self.cross_attn(x, context, context_mask, cache=cache)))
            else:
                x = x + self.dropout(self.cross_attn(self.cross_norm(x), context, context_mask, cache=cache))
        if self.modulation is not None:
            x = x + gate2 * self.dropout(self.ffn(self.ffn_norm(x) * (1 + scale2) + shift2))
        elif self.post_norm:
            x = self.ffn_norm(x + self.dropout(self.ffn(x)))
        else:
            x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x
