"""The one attention function every layer uses.

On CUDA with a working ``xformers`` (probed once, cached) it calls
``xformers.ops.memory_efficient_attention`` (layout ``[B, M, H, K]``, key padding as an additive bias);
everywhere else ``torch.nn.functional.scaled_dot_product_attention`` (layout ``[B, H, M, K]``, boolean mask,
True = attend). xformers has no CPU kernels, so the CPU path is always SDPA.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger("lightning_diffusion")

_FORCE_BACKEND: str | None = None


@functools.cache
def xformers_available() -> bool:
    """True when xformers imports and its memory-efficient kernel runs on this CUDA device (probed once)."""
    if not torch.cuda.is_available():
        return False
    try:
        import xformers.ops as xops

        q = torch.randn(1, 8, 1, 16, device="cuda", dtype=torch.float16)
        xops.memory_efficient_attention(q, q, q)
        return True
    except Exception as err:  # noqa: BLE001 - any failure means: fall back to SDPA
        log.info("xformers memory-efficient attention unavailable (%s); using PyTorch SDPA", err)
        return False


def set_backend(name: str | None) -> None:
    """Force ``"sdpa"`` or ``"xformers"`` (tests, benchmarks); ``None`` restores automatic choice."""
    global _FORCE_BACKEND
    if name not in (None, "sdpa", "xformers"):
        raise ValueError(f"unknown attention backend {name!r}: expected 'sdpa', 'xformers' or None")
    _FORCE_BACKEND = name


def backend_for(tensor: Tensor) -> str:
    """The backend :func:`attention` would use for ``tensor``'s device and dtype."""
    if _FORCE_BACKEND is not None:
        return _FORCE_BACKEND
    if tensor.is_cuda and xformers_available():
        return "xformers"
    return "sdpa"


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    causal: bool = False,
) -> Tensor:
    """Multi-head scaled dot-product attention ``softmax(q k^T / sqrt(K)) v``.

    Args:
        q: ``[B, M, H, K]`` queries.
        k, v: ``[B, N, H, K]`` keys and values.
        key_padding_mask: ``[B, N]`` bool, True at keys that may be attended (real tokens); None = all.
        dropout_p: attention dropout (pass 0 in eval).
        causal: query ``i`` attends only keys ``j <= N - M + i``: the queries are the last ``M`` of the
            ``N`` positions (``M == N`` in teacher forcing; ``M < N`` when decoding incrementally with
            cached keys). Combined with ``key_padding_mask`` when both are given.

    Returns:
        ``[B, M, H, K]``. A batch row whose keys are all masked (e.g. an empty source kept for prediction)
        attends to nothing and gets exactly zeros, with zero gradients, on every backend (a plain masked
        softmax would give NaN there: 0/0).
    """
    if causal and q.shape[1] > k.shape[1]:
        raise ValueError(f"causal attention needs at most as many queries ({q.shape[1]}) as keys ({k.shape[1]})")
    empty = None
    if key_padding_mask is not None:
        # No host sync: unmask fully masked rows so every kernel sees a finite softmax, then zero their output.
        empty = ~key_padding_mask.any(dim=-1)  # [B]
        key_padding_mask = key_padding_mask | empty[:, None]
    if backend_for(q) == "xformers":
        out = _xformers_attention(q, k, v, key_padding_mask, dropout_p, causal)
    else:
        out = _sdpa_attention(q, k, v, key_padding_mask, dropout_p, causal)
    return out if empty is None else out.masked_fill(empty[:, None, None, None], 0.0)


def causal_mask(m: int, n: int, device: torch.device | str | None = None) -> Tensor:
    """``[M, N]`` bool, True where query ``i`` (the ``i``-th of the last ``M`` positions) may attend key ``j``:
    ``j <= N - M + i`` (the causal mask aligned to the end of the keys)."""
    return torch.ones(m, n, dtype=torch.bool, device=device).tril(diagonal=n - m)


def _sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, dropout_p: float, causal: bool = False
) -> Tensor:
    m, n = q.shape[1], k.shape[1]
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    is_causal = False
    if causal and m > 1:  # one query that is the last position sees every key: nothing to mask
        if mask is None and m == n:
            is_causal = True  # SDPA's own (top-left aligned) causal mask is the right one when M == N
        else:
            tri = causal_mask(m, n, q.device)[None, None]
            mask = tri if mask is None else mask & tri
    dtype = q.dtype
    if q.device.type == "cpu" and dtype == torch.bfloat16:
        # PyTorch's CPU SDPA kernels are ~3.5x slower in bf16 than in float32 (forward + backward at
        # [64, 4, 24, 32], torch 2.13, AVX512-BF16 EPYC); under CPU autocast (``precision: bf16-mixed``) the
        # matmuls stay bf16 and attention runs in float32 (autocast would cast SDPA's inputs back to bf16).
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(
                q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2),
                attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
            )
        return out.transpose(1, 2).to(dtype)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal
    )
    return out.transpose(1, 2)


def _xformers_attention(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, dropout_p: float, causal: bool = False
) -> Tensor:
    import xformers.ops as xops

    bias = None
    causal = causal and q.shape[1] > 1
    if key_padding_mask is not None or causal:
        b, m, h, _ = q.shape
        n = k.shape[1]
        # xformers wants the bias' last dim padded to a multiple of 8 for aligned loads; slice back to n.
        padded = (n + 7) // 8 * 8
        full = torch.zeros(b, h, m, padded, dtype=q.dtype, device=q.device)
        bias = full[..., :n]
        allowed = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        if causal:
            tri = causal_mask(m, n, q.device)[None, None]
            allowed = tri if allowed is None else allowed & tri
        assert allowed is not None
        bias.masked_fill_(~allowed, float("-inf"))
    return xops.memory_efficient_attention(q, k, v, attn_bias=bias, p=dropout_p)
