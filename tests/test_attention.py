"""The attention function: SDPA path against a plain softmax reference, backend selection, xformers (CUDA)."""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch

from lightning_diffusion import attention as attn_mod
from lightning_diffusion.attention import attention, backend_for, set_backend

B, M, N, H, K = 2, 5, 7, 2, 8


@pytest.fixture(autouse=True)
def _restore_backend():
    set_backend(None)
    yield
    set_backend(None)


def reference_attention(q, k, v, key_padding_mask=None):
    """softmax(q k^T / sqrt(K)) v in [B, M, H, K] layout, masked keys get -inf."""
    scores = torch.einsum("bmhk,bnhk->bhmn", q, k) / math.sqrt(q.shape[-1])
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    weights = scores.softmax(-1)
    return torch.einsum("bhmn,bnhk->bmhk", weights, v)


def _qkv(dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, M, H, K, generator=g, dtype=torch.float32)
    k = torch.randn(B, N, H, K, generator=g, dtype=torch.float32)
    v = torch.randn(B, N, H, K, generator=g, dtype=torch.float32)
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


MASK = torch.tensor([[True, True, True, True, True, False, False], [True, False, True, True, True, True, True]])


def test_sdpa_matches_reference_with_padding_mask():
    q, k, v = _qkv()
    out = attention(q, k, v, MASK)
    assert out.shape == (B, M, H, K)
    torch.testing.assert_close(out, reference_attention(q, k, v, MASK), atol=1e-5, rtol=1e-5)


def test_sdpa_matches_reference_without_mask():
    q, k, v = _qkv(seed=1)
    torch.testing.assert_close(attention(q, k, v), reference_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_cross_attention_shapes():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(B, 3, H, K, generator=g)
    k = torch.randn(B, 11, H, K, generator=g)
    v = torch.randn(B, 11, H, K, generator=g)
    mask = torch.ones(B, 11, dtype=torch.bool)
    mask[0, 6:] = False
    out = attention(q, k, v, mask)
    assert out.shape == (B, 3, H, K)
    torch.testing.assert_close(out, reference_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_masked_keys_do_not_matter():
    q, k, v = _qkv(seed=3)
    k2, v2 = k.clone(), v.clone()
    k2[~MASK] = 100.0
    v2[~MASK] = -100.0
    torch.testing.assert_close(attention(q, k, v, MASK), attention(q, k2, v2, MASK), atol=1e-6, rtol=1e-6)


def test_forced_sdpa_is_used_on_cpu():
    q, k, v = _qkv(seed=4)
    set_backend("sdpa")
    assert backend_for(q) == "sdpa"
    torch.testing.assert_close(attention(q, k, v, MASK), reference_attention(q, k, v, MASK), atol=1e-5, rtol=1e-5)


def test_backend_for_cpu_is_sdpa():
    assert backend_for(torch.zeros(1)) == "sdpa"


def test_set_backend_validation_and_reset():
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_backend("flash")
    with pytest.raises(ValueError):
        set_backend("SDPA")
    set_backend("xformers")
    assert backend_for(torch.zeros(1)) == "xformers"
    set_backend(None)
    assert backend_for(torch.zeros(1)) == "sdpa"


def test_xformers_unavailable_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert attn_mod.xformers_available() is False


_HAS_XFORMERS = importlib.util.find_spec("xformers") is not None


@pytest.mark.skipif(not torch.cuda.is_available() or not _HAS_XFORMERS, reason="needs CUDA and xformers")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("n", [N, 8, 13])
def test_xformers_matches_sdpa_with_padding_mask(dtype, n):
    if not attn_mod.xformers_available():
        pytest.skip("xformers kernel does not run on this device")
    g = torch.Generator().manual_seed(5)
    q = torch.randn(B, M, H, K, generator=g).cuda().to(dtype)
    k = torch.randn(B, n, H, K, generator=g).cuda().to(dtype)
    v = torch.randn(B, n, H, K, generator=g).cuda().to(dtype)
    mask = torch.ones(B, n, dtype=torch.bool, device="cuda")
    mask[0, n - 2 :] = False
    mask[1, 1] = False
    set_backend("xformers")
    out_x = attention(q, k, v, mask)
    set_backend("sdpa")
    out_s = attention(q, k, v, mask)
    tol = 2e-3 if dtype == torch.float16 else 1e-5
    torch.testing.assert_close(out_x, out_s, atol=tol, rtol=tol)
    set_backend(None)
    assert backend_for(q) == "xformers"


def test_cpu_bf16_attention_runs_in_float32_and_returns_bf16(monkeypatch):
    """bf16 inputs on CPU (bf16-mixed autocast or bf16 weights): SDPA runs in float32 (its CPU bf16 kernels are
    ~3.5x slower), also inside CPU autocast, which would otherwise cast its inputs back to bf16; the result and the
    gradients are bf16."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kwargs):
        out = sdpa(q, k, v, **kwargs)
        seen.append((q.dtype, out.dtype))
        return out

    monkeypatch.setattr(attn_mod, "F", SimpleNamespace(scaled_dot_product_attention=recording_sdpa))
    q, k, v = (t.to(torch.bfloat16).requires_grad_() for t in _qkv(seed=3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v, MASK)
    assert seen == [(torch.float32, torch.float32)]
    assert out.dtype == torch.bfloat16
    expected = reference_attention(q.float(), k.float(), v.float(), MASK)
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)
    out.float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad.float()).all()
