"""Denoisers: the base class's embedding/rounding head and the DiffuSeq transformer."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lightning_diffusion.denoisers import Denoiser, DiffuSeqDenoiser
from lightning_diffusion.denoisers.layers import MultiHeadAttention, TimestepEmbedding, sinusoidal_embedding
from lightning_diffusion.types import Conditioning

VOCAB, LATENT, HIDDEN = 50, 16, 32


def make(**kwargs) -> DiffuSeqDenoiser:
    torch.manual_seed(kwargs.pop("seed", 0))
    args = dict(
        vocab_size=VOCAB, latent_dim=LATENT, hidden_dim=HIDDEN, num_layers=2, num_heads=2, ffn_dim=64, dropout=0.1
    )
    args.update(kwargs)
    return DiffuSeqDenoiser(**args)


@pytest.fixture
def model() -> DiffuSeqDenoiser:
    return make().eval()


def _batch(b=2, s=5, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(1, VOCAB, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.bool)
    z = torch.randn(b, length, LATENT, generator=g)
    t = torch.randint(1, 100, (b,), generator=g)
    return src, mask, z, t


def test_shapes(model):
    src, mask, z, t = _batch()
    cond = model.encode(src, mask)
    assert isinstance(cond, Conditioning)
    assert cond.hidden.shape == (2, 5, HIDDEN)
    assert torch.equal(cond.mask, mask)
    out = model(z, t, cond)
    assert out.shape == (2, 6, LATENT)
    assert model.embed(src).shape == (2, 5, LATENT)
    assert model.embedding_table().shape == (VOCAB, LATENT)
    assert model.logits(out).shape == (2, 6, VOCAB)


def test_logits_tied_to_embedding_table(model):
    z = torch.randn(2, 3, LATENT)
    torch.testing.assert_close(model.logits(z), z @ model.embedding_table().T)
    ids = torch.tensor([[1, 7, 49]])
    torch.testing.assert_close(model.embed(ids)[0], model.embedding_table()[ids[0]])
    with torch.no_grad():
        model.word_embedding.weight[7] += 1.0
    torch.testing.assert_close(model.logits(z), z @ model.embedding_table().T)
    torch.testing.assert_close(model.embedding_table()[7], model.word_embedding.weight[7])


def test_padding_invariance_source(model):
    """Example 0 alone (no padding) == example 0 batched with a longer source (padded)."""
    g = torch.Generator().manual_seed(1)
    src_a = torch.randint(1, VOCAB, (1, 3), generator=g)
    src_b = torch.randint(1, VOCAB, (1, 8), generator=g)
    z = torch.randn(2, 4, LATENT, generator=g)
    t = torch.tensor([17, 60])
    with torch.no_grad():
        alone = model(z[:1], t[:1], model.encode(src_a, torch.ones(1, 3, dtype=torch.bool)))
        src = torch.zeros(2, 8, dtype=torch.long)
        src[0, :3] = src_a[0]
        src[1] = src_b[0]
        mask = torch.zeros(2, 8, dtype=torch.bool)
        mask[0, :3] = True
        mask[1] = True
        batched = model(z, t, model.encode(src, mask))
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)


def test_padding_content_does_not_matter(model):
    src, mask, z, t = _batch()
    mask[0, 3:] = False
    src2 = src.clone()
    src2[0, 3:] = 7
    with torch.no_grad():
        a = model(z, t, model.encode(src, mask))
        b = model(z, t, model.encode(src2, mask))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_padding_invariance_target(model):
    """Real target positions do not depend on extra (masked) target positions."""
    src, mask, _, t = _batch(b=1)
    g = torch.Generator().manual_seed(2)
    z_short = torch.randn(1, 4, LATENT, generator=g)
    z_long = torch.cat([z_short, 5 * torch.randn(1, 3, LATENT, generator=g)], dim=1)
    tgt_mask = torch.tensor([[True] * 4 + [False] * 3])
    with torch.no_grad():
        cond = model.encode(src, mask)
        short = model(z_short, t, cond)
        long = model(z_long, t, cond, tgt_mask)
    torch.testing.assert_close(long[:, :4], short, atol=1e-5, rtol=1e-5)


def test_output_depends_on_source_and_time(model):
    src, mask, z, t = _batch()
    with torch.no_grad():
        base = model(z, t, model.encode(src, mask))
        other_src = model(z, t, model.encode((src + 1) % VOCAB, mask))
        other_t = model(z, t + 5, model.encode(src, mask))
    assert not torch.allclose(base, other_src)
    assert not torch.allclose(base, other_t)


def test_train_mode_dropout_is_stochastic_eval_is_not():
    m = make(dropout=0.5)
    src, mask, z, t = _batch()
    m.train()
    assert not torch.allclose(m(z, t, m.encode(src, mask)), m(z, t, m.encode(src, mask)))
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(z, t, m.encode(src, mask)), m(z, t, m.encode(src, mask)))


def test_self_conditioning_input_width_and_none():
    m = make(self_conditioning=True).eval()
    assert m.self_conditioning
    first = m.input_proj[0]
    assert first.in_features == 2 * LATENT
    assert make().input_proj[0].in_features == LATENT
    src, mask, z, t = _batch()
    with torch.no_grad():
        cond = m.encode(src, mask)
        out_none = m(z, t, cond, self_cond=None)
        out_zero = m(z, t, cond, self_cond=torch.zeros_like(z))
        out_prev = m(z, t, cond, self_cond=torch.randn_like(z))
    assert out_none.shape == (2, 6, LATENT)
    torch.testing.assert_close(out_none, out_zero)
    assert not torch.allclose(out_none, out_prev)


def test_embedding_norm_rows_are_normalised():
    m = make(embedding_norm=True)
    table = m.embedding_table().detach()
    torch.testing.assert_close(table.mean(-1), torch.zeros(VOCAB), atol=1e-5, rtol=0)
    torch.testing.assert_close(table.var(-1, unbiased=False), torch.ones(VOCAB), atol=1e-3, rtol=0)
    ids = torch.tensor([[3, 4]])
    torch.testing.assert_close(m.embed(ids)[0], table[ids[0]])


def test_embedding_scale():
    m = make(embedding_norm=True, embedding_scale=4.0)
    table = m.embedding_table().detach()
    torch.testing.assert_close(table.var(-1, unbiased=False), torch.full((VOCAB,), 16.0), atol=1e-2, rtol=0)
    plain = make(embedding_scale=2.0)
    torch.testing.assert_close(plain.embedding_table(), 2.0 * plain.word_embedding.weight)


def test_max_positions_overflow_raises(model):
    m = make(max_positions=12).eval()
    src = torch.randint(1, VOCAB, (1, 5))
    mask = torch.ones(1, 5, dtype=torch.bool)
    cond = m.encode(src, mask)
    with torch.no_grad():
        ok = m(torch.randn(1, 6, LATENT), torch.tensor([3]), cond)  # 5 + 1 + 6 == 12 fits exactly
        assert ok.shape == (1, 6, LATENT)
        with pytest.raises(ValueError, match="max_positions"):
            m(torch.randn(1, 7, LATENT), torch.tensor([3]), cond)  # 13 > 12


def test_gradients_flow_to_all_parameters():
    for kwargs in ({}, {"self_conditioning": True, "embedding_norm": True}):
        m = make(dropout=0.0, **kwargs).train()
        src, mask, _, t = _batch()
        tgt = torch.randint(0, VOCAB, (2, 6))
        z0 = m.embed(tgt)
        z_t = z0 + torch.randn_like(z0)
        self_cond = torch.randn_like(z0) if kwargs else None
        x0 = m(z_t, t, m.encode(src, mask), self_cond=self_cond)
        loss = ((x0 - z0) ** 2).mean() + torch.nn.functional.cross_entropy(m.logits(z0).transpose(1, 2), tgt)
        loss.backward()
        missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, f"no gradient for {missing}"
        zero = [n for n, p in m.named_parameters() if p.grad.abs().sum() == 0]
        assert not zero, f"zero gradient for {zero}"


def test_vocab_size_validation():
    with pytest.raises(ValueError):
        make(vocab_size=1)


def test_conditioning_repeat_interleave():
    cond = Conditioning(
        hidden=torch.arange(6.0).view(2, 3, 1), mask=torch.tensor([[True, True, False], [True, False, False]]),
        extras={"x": torch.tensor([10, 20])},
    )
    assert cond.repeat_interleave(1) is cond
    rep = cond.repeat_interleave(3)
    assert rep.hidden.shape == (6, 3, 1)
    assert torch.equal(rep.hidden[:3], cond.hidden[:1].expand(3, -1, -1))
    assert torch.equal(rep.mask[3:], cond.mask[1:].expand(3, -1))
    assert rep.extras["x"].tolist() == [10, 10, 10, 20, 20, 20]


# ---------------------------------------------------------------- layers


def test_sinusoidal_embedding():
    t = torch.tensor([0, 5, 100])
    emb = sinusoidal_embedding(t, 8)
    assert emb.shape == (3, 8)
    # t = 0: cos = 1, sin = 0
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    # first frequency is 1
    assert emb[1, 0].item() == pytest.approx(torch.cos(torch.tensor(5.0)).item(), abs=1e-6)
    assert emb[1, 4].item() == pytest.approx(torch.sin(torch.tensor(5.0)).item(), abs=1e-6)
    assert sinusoidal_embedding(t, 7).shape == (3, 7)
    assert TimestepEmbedding(12)(t).shape == (3, 12)


def test_multihead_attention_validation_and_shape():
    with pytest.raises(ValueError):
        MultiHeadAttention(30, 4)
    mha = MultiHeadAttention(32, 4).eval()
    x = torch.randn(2, 5, 32)
    ctx = torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 4:] = False
    out = mha(x, ctx, mask)
    assert out.shape == (2, 5, 32)
    ctx2 = ctx.clone()
    ctx2[1, 4:] = 99.0
    torch.testing.assert_close(mha(x, ctx2, mask), out)


class _Minimal(Denoiser):
    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Conditioning:
        return Conditioning(hidden=self.embed(src_ids), mask=src_mask)

    def forward(self, z_t, t, cond, tgt_mask=None, self_cond=None):
        return z_t


def test_base_denoiser_defaults():
    m = _Minimal(10, 4)
    assert m.vocab_size == 10 and m.latent_dim == 4 and not m.self_conditioning
    assert m.embedding_norm is None
    torch.testing.assert_close(m.embedding_table(), m.word_embedding.weight)
    # N(0, 1) init of the embeddings
    assert 0.3 < m.word_embedding.weight.std().item() < 2.0


def test_predict_returns_the_source_output_of_the_same_pass(model):
    src, mask, z, t = _batch()
    cond = model.encode(src, mask)
    assert model.predict(z, t, cond).source_x0 is None  # only when a loss term asks for it
    out = model.predict(z, t, cond, with_source=True)
    torch.testing.assert_close(out.x0, model(z, t, cond))
    assert out.source_x0.shape == (2, 5, LATENT)
    handle = model.register_forward_hook(lambda module, args, output: output * 2.0)
    hooked = model.predict(z, t, cond, with_source=True)
    handle.remove()
    assert hooked.source_x0 is None  # a hook (skip preconditioning) sees the target output only
    torch.testing.assert_close(hooked.x0, 2.0 * out.x0)


def test_shared_projection_embeds_the_source_like_the_noisy_target():
    model = make(shared_projection=True).eval()
    assert model.source_proj is None
    src, mask, _, _ = _batch()
    torch.testing.assert_close(model.encode(src, mask).hidden, model.input_proj(model.embed(src)))
    selfcond = make(shared_projection=True, self_conditioning=True).eval()
    emb = selfcond.embed(src)
    expected = selfcond.input_proj(torch.cat([emb, torch.zeros_like(emb)], dim=-1))  # empty self-conditioning slot
    torch.testing.assert_close(selfcond.encode(src, mask).hidden, expected)


def test_post_norm_layer_is_layernorm_of_the_residual_sum():
    from lightning_diffusion.denoisers.layers import TransformerLayer

    torch.manual_seed(0)
    layer = TransformerLayer(8, 2, 16, dropout=0.0, post_norm=True).eval()
    x = torch.randn(2, 3, 8)
    h = layer.self_norm(x + layer.self_attn(x))
    torch.testing.assert_close(layer(x), layer.ffn_norm(h + layer.ffn(h)))
    model = make(post_norm=True)
    assert isinstance(model.output_norm, torch.nn.Identity) and all(layer.post_norm for layer in model.layers)
    with pytest.raises(ValueError, match="post_norm and adaptive_norm"):
        TransformerLayer(8, 2, 16, adaptive_norm=True, post_norm=True)
