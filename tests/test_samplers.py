"""Samplers: respacing, clamping, DDIM/ancestral updates, the sampling loop (with a fake denoiser)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from lightning_diffusion.denoisers.base import Denoiser
from lightning_diffusion.samplers import (
    AncestralSampler,
    DDIMSampler,
    nearest_embedding,
    respaced_steps,
    round_to_tokens,
)
from lightning_diffusion.samplers.rounding import default_chunk_rows
from lightning_diffusion.schedules import CosineSchedule, NoiseSchedule, SqrtSchedule
from lightning_diffusion.types import Conditioning

V, D = 6, 8


def _table() -> Tensor:
    """Equal-norm, orthogonal rows: nearest row == argmax of the tied head."""
    return 3.0 * torch.eye(V, D)


class FakeDenoiser(Denoiser):
    """Returns ``Emb(true_ids) + offset`` whatever its input; records every call."""

    def __init__(self, true_ids: Tensor, offset: Tensor | None = None, self_conditioning: bool = False) -> None:
        super().__init__(V, D, self_conditioning=self_conditioning)
        with torch.no_grad():
            self.word_embedding.weight.copy_(_table())
        self.true_ids = true_ids
        self.offset = offset
        self.calls: list[dict] = []

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Conditioning:
        return Conditioning(hidden=torch.zeros(src_ids.shape[0], src_ids.shape[1], 1), mask=src_mask)

    def forward(self, z_t, t, cond, tgt_mask=None, self_cond=None):
        x0 = self.embed(self.true_ids)
        if self.offset is not None:
            x0 = x0 + self.offset
        self.calls.append(
            {
                "z_t": z_t.clone(),
                "t": t.clone(),
                "tgt_mask": None if tgt_mask is None else tgt_mask.clone(),
                "self_cond": None if self_cond is None else self_cond.clone(),
                "out": x0.clone(),
            }
        )
        return x0


@pytest.fixture
def true_ids() -> Tensor:
    return torch.tensor([[0, 3, 5, 1], [2, 2, 4, 0]])


def _cond(b: int) -> Conditioning:
    return Conditioning(hidden=torch.zeros(b, 3, 1), mask=torch.ones(b, 3, dtype=torch.bool))


# ---------------------------------------------------------------- respaced_steps


@settings(max_examples=200, deadline=None)
@given(T=st.integers(1, 3000), K=st.integers(1, 3500))
def test_respaced_steps_properties(T, K):
    chain = respaced_steps(T, K)
    assert chain[0] == T
    assert chain[-1] == 0
    assert all(a > b for a, b in zip(chain, chain[1:], strict=False))
    assert len(chain) == min(K, T) + 1
    assert all(isinstance(x, int) for x in chain)


@pytest.mark.parametrize("T", [1, 5, 17, 100])
def test_respaced_steps_full(T):
    assert respaced_steps(T, T) == list(range(T, -1, -1))
    assert respaced_steps(T, 10 * T) == list(range(T, -1, -1))


def test_respaced_steps_examples_and_errors():
    assert respaced_steps(10, 1) == [10, 0]
    assert respaced_steps(10, 2) == [10, 1, 0]
    with pytest.raises(ValueError):
        respaced_steps(10, 0)


# ---------------------------------------------------------------- nearest_embedding


def test_nearest_embedding_hand_case_prefers_distance_over_dot_product():
    table = torch.tensor([[1.0, 0.0], [10.0, 0.0], [0.0, -2.0]])
    x = torch.tensor([[[1.2, 0.0], [6.0, 0.0], [0.1, -1.5], [-3.0, 0.0]]])
    out = nearest_embedding(x, table)
    expected = torch.tensor([[[1.0, 0.0], [10.0, 0.0], [0.0, -2.0], [0.0, -2.0]]])  # last: 13 < 16 < 169
    assert torch.equal(out, expected)


def test_nearest_embedding_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(20, 5, generator=g) * torch.rand(20, 1, generator=g) * 3
    x = torch.randn(3, 7, 5, generator=g) * 2
    idx = torch.cdist(x.reshape(-1, 5), table).argmin(-1)
    assert torch.equal(nearest_embedding(x, table), table[idx].view(3, 7, 5))


# ---------------------------------------------------------------- chunked clamping and rounding

CHUNKS = [1, 2, 3, 5, 7, 20, 21, 22, 1000, None]


class TableDenoiser(Denoiser):
    """A denoiser that is only its embedding table (for rounding); records the shapes ``logits`` gets."""

    def __init__(self, table: Tensor) -> None:
        super().__init__(table.shape[0], table.shape[1])
        with torch.no_grad():
            self.word_embedding.weight.copy_(table)
        self.logit_shapes: list[tuple[int, ...]] = []

    def logits(self, z: Tensor) -> Tensor:
        self.logit_shapes.append(tuple(z.shape))
        return super().logits(z)

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Conditioning:
        raise NotImplementedError

    def forward(self, z_t, t, cond, tgt_mask=None, self_cond=None):
        raise NotImplementedError


def _unchunked_nearest(x: Tensor, table: Tensor) -> Tensor:
    """The former one-shot clamping: ``[B, L, V]`` scores at once."""
    scores = (table**2).sum(-1) - 2.0 * torch.einsum("bld,vd->blv", x, table)
    return table[scores.argmin(-1)]


def _tie_table_and_points() -> tuple[Tensor, Tensor]:
    """Integer table (exact float arithmetic) with duplicate rows and points equidistant from several rows."""
    table = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    points = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [1.0, 2.0], [0.0, 0.0], [3.0, 1.0]]
    )
    return table, points.repeat(5, 1).view(3, 15, 2)


@pytest.mark.parametrize("chunk_rows", CHUNKS)
def test_nearest_embedding_chunked_equals_unchunked(chunk_rows):
    g = torch.Generator().manual_seed(11)
    table = torch.randn(20, 5, generator=g) * torch.rand(20, 1, generator=g) * 3
    x = torch.randn(3, 7, 5, generator=g) * 2
    expected = nearest_embedding(x, table, chunk_rows=10**9)
    assert torch.equal(nearest_embedding(x, table, chunk_rows=chunk_rows), expected)
    assert torch.equal(expected, _unchunked_nearest(x, table))
    idx = torch.cdist(x.reshape(-1, 5), table).argmin(-1)
    assert torch.equal(expected, table[idx].view(3, 7, 5))


@pytest.mark.parametrize("chunk_rows", CHUNKS)
def test_nearest_embedding_ties_go_to_the_first_index(chunk_rows):
    table, x = _tie_table_and_points()
    scores = (table**2).sum(-1) - 2.0 * torch.einsum("bld,vd->blv", x, table)
    idx = scores.argmin(-1)
    assert (scores.min(-1).values[..., None] == scores).sum(-1).max() >= 3  # real ties, exactly equal
    assert torch.equal(nearest_embedding(x, table, chunk_rows), table[idx])
    assert torch.equal(nearest_embedding(x[0, :2], table, chunk_rows), table[idx[0, :2]])  # any leading shape
    # [1, 0] is as far from [0, 0] as from [2, 0]: the first row wins
    assert nearest_embedding(torch.tensor([[[1.0, 0.0]]]), table, chunk_rows).tolist() == [[[0.0, 0.0]]]


@pytest.mark.parametrize("chunk_rows", CHUNKS)
def test_round_to_tokens_chunked_equals_unchunked(chunk_rows):
    g = torch.Generator().manual_seed(12)
    den = TableDenoiser(torch.randn(50, D, generator=g))
    z = torch.randn(3, 11, D, generator=g)
    expected = den.logits(z).argmax(-1)
    den.logit_shapes.clear()
    ids = round_to_tokens(den, z, chunk_rows)
    assert ids.shape == (3, 11) and ids.dtype == torch.long
    assert torch.equal(ids, expected)
    rows = default_chunk_rows(50) if chunk_rows is None else chunk_rows
    assert den.logit_shapes == [(1, min(rows, 33 - start), D) for start in range(0, 33, rows)]


@pytest.mark.parametrize("chunk_rows", CHUNKS)
def test_round_to_tokens_ties_go_to_the_first_index(chunk_rows):
    table, z = _tie_table_and_points()
    den = TableDenoiser(table)
    logits = den.logits(z)
    assert (logits.max(-1).values[..., None] == logits).sum(-1).max() >= 2  # duplicate rows tie exactly
    assert torch.equal(round_to_tokens(den, z, chunk_rows), logits.argmax(-1))


def test_chunk_rows_default_and_validation():
    assert default_chunk_rows(32000) == 524  # 64 MiB of float32 scores
    assert default_chunk_rows(32000, element_size=2) == 1048
    assert default_chunk_rows(10**9) == 1
    table = torch.eye(4)
    with pytest.raises(ValueError, match="chunk_rows"):
        nearest_embedding(torch.zeros(1, 2, 4), table, chunk_rows=0)
    with pytest.raises(ValueError, match="chunk_rows"):
        round_to_tokens(TableDenoiser(table), torch.zeros(1, 2, 4), chunk_rows=-1)
    assert nearest_embedding(torch.zeros(0, 3, 4), table).shape == (0, 3, 4)
    assert round_to_tokens(TableDenoiser(table), torch.zeros(0, 3, 4)).shape == (0, 3)


@pytest.mark.parametrize("sampler_cls", [DDIMSampler, AncestralSampler])
def test_sampler_chunk_rows_does_not_change_the_result(sampler_cls, true_ids):
    sched = CosineSchedule(50)
    offset = 2.0 * torch.randn(2, 4, D, generator=torch.Generator().manual_seed(13))  # large: clamping matters
    outs = []
    for chunk_rows in (None, 1, 3, 10**9):
        sampler = sampler_cls(steps=4, clamp=True)
        assert sampler.chunk_rows is None
        sampler.chunk_rows = chunk_rows
        den = FakeDenoiser(true_ids, offset)
        outs.append(sampler.sample(den, sched, _cond(2), 4, generator=torch.Generator().manual_seed(0)))
    for out in outs[1:]:
        assert torch.equal(out.latents, outs[0].latents) and torch.equal(out.token_ids, outs[0].token_ids)
    assert sampler_cls.chunk_rows is None  # set on instances only


# ---------------------------------------------------------------- single updates


def _levels(sched, t, s, b=2, length=4):
    return sched.alpha_bar(torch.full((b,), t), length), sched.alpha_bar(torch.full((b,), s), length)


@pytest.mark.parametrize("F", [1.0, 2.0])
@pytest.mark.parametrize("t,s", [(100, 60), (40, 39), (7, 0), (100, 1)])
def test_ddim_single_step_consistency(F, t, s):
    """z_t = q_sample(x0, t, eps): DDIM (eta=0) recovers eps and lands on q_sample(x0, s, eps)."""
    sched = CosineSchedule(100)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, D, generator=g)
    eps = torch.randn(2, 4, D, generator=g)
    z_t = sched.q_sample(x0, torch.full((2,), t), eps, F)
    abar_t, abar_s = _levels(sched, t, s)
    sampler = DDIMSampler(eta=0.0, noise_factor=F)
    z_s = sampler.step(z_t, x0, abar_t, abar_s, torch.randn(2, 4, D, generator=g))
    expected = sched.q_sample(x0, torch.full((2,), s), eps, F)
    torch.testing.assert_close(z_s, expected, atol=1e-5, rtol=1e-5)
    # and the implied eps_hat equals eps
    a = abar_t[0, 0].item()
    eps_hat = (z_t - math.sqrt(a) * x0) / (F * math.sqrt(1 - a))
    torch.testing.assert_close(eps_hat, eps, atol=1e-5, rtol=1e-5)


def test_ddim_hand_formula_with_eta():
    abar_t, abar_s, eta, F = 0.3, 0.6, 0.5, 2.0
    z_t, x0, noise = torch.tensor([[[1.0]]]), torch.tensor([[[0.4]]]), torch.tensor([[[-0.7]]])
    eps_hat = (1.0 - math.sqrt(abar_t) * 0.4) / (F * math.sqrt(1 - abar_t))
    sigma = eta * math.sqrt((1 - abar_s) / (1 - abar_t)) * math.sqrt(1 - abar_t / abar_s)
    expected = math.sqrt(abar_s) * 0.4 + F * math.sqrt(1 - abar_s - sigma**2) * eps_hat + F * sigma * -0.7
    out = DDIMSampler(eta=eta, noise_factor=F).step(
        z_t, x0, torch.tensor([[abar_t]]), torch.tensor([[abar_s]]), noise
    )
    assert out.item() == pytest.approx(expected, rel=1e-6)


def test_ddim_eta0_ignores_noise_eta1_does_not():
    sched = SqrtSchedule(50)
    g = torch.Generator().manual_seed(2)
    z_t, x0 = torch.randn(2, 4, D, generator=g), torch.randn(2, 4, D, generator=g)
    n1, n2 = torch.randn(2, 4, D, generator=g), torch.randn(2, 4, D, generator=g)
    abar_t, abar_s = _levels(sched, 30, 20)
    det = DDIMSampler(eta=0.0)
    assert torch.equal(det.step(z_t, x0, abar_t, abar_s, n1), det.step(z_t, x0, abar_t, abar_s, n2))
    sto = DDIMSampler(eta=1.0)
    assert not torch.allclose(sto.step(z_t, x0, abar_t, abar_s, n1), sto.step(z_t, x0, abar_t, abar_s, n2))


@pytest.mark.parametrize("F", [1.0, 3.0])
def test_ddim_eta1_equals_ancestral_step(F):
    # float64: for s = t - 1, 1 - abar_s - sigma^2 cancels badly in float32
    sched = CosineSchedule(100).to(torch.float64)
    g = torch.Generator().manual_seed(3)
    z_t, x0, noise = (torch.randn(2, 4, D, generator=g, dtype=torch.float64) for _ in range(3))
    for t, s in [(100, 80), (50, 49), (10, 0)]:
        abar_t, abar_s = _levels(sched, t, s)
        a = DDIMSampler(eta=1.0, noise_factor=F).step(z_t, x0, abar_t, abar_s, noise)
        b = AncestralSampler(noise_factor=F).step(z_t, x0, abar_t, abar_s, noise)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_ancestral_step_hand_formula():
    abar_t, abar_s, F = 0.4, 0.9, 1.5
    z_t, x0, noise = torch.tensor([[[2.0]]]), torch.tensor([[[-1.0]]]), torch.tensor([[[0.3]]])
    beta = 1 - abar_t / abar_s
    mean = math.sqrt(abar_s) * beta / (1 - abar_t) * -1.0 + math.sqrt(abar_t / abar_s) * (1 - abar_s) / (1 - abar_t) * 2.0
    var = beta * (1 - abar_s) / (1 - abar_t)
    out = AncestralSampler(noise_factor=F).step(z_t, x0, torch.tensor([[abar_t]]), torch.tensor([[abar_s]]), noise)
    assert out.item() == pytest.approx(mean + F * math.sqrt(var) * 0.3, rel=1e-6)


def test_constructor_validation_and_describe():
    with pytest.raises(ValueError):
        DDIMSampler(eta=1.5)
    with pytest.raises(ValueError):
        DDIMSampler(eta=-0.1)
    with pytest.raises(ValueError):
        AncestralSampler(steps=0)
    desc = DDIMSampler(steps=7, eta=0.5, clamp=True, clamp_from=3, noise_factor=2.0).describe()
    assert desc.startswith("DDIMSampler(") and desc.endswith(")")
    assert "steps=7" in desc and "eta=0.5" in desc and "clamp from step 3" in desc and "noise_factor=2.0" in desc


# ---------------------------------------------------------------- the sampling loop


@pytest.mark.parametrize("sampler_cls", [DDIMSampler, AncestralSampler])
@pytest.mark.parametrize("F", [1.0, 4.0])
def test_sample_with_true_x0_recovers_x0(sampler_cls, F, true_ids):
    sched = SqrtSchedule(200)
    den = FakeDenoiser(true_ids)
    sampler = sampler_cls(steps=10, noise_factor=F)
    out = sampler.sample(den, sched, _cond(2), length=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.latents, den.embed(true_ids).detach(), atol=1e-6, rtol=0)
    assert torch.equal(out.token_ids, true_ids)
    assert out.nfe == 10
    assert len(den.calls) == 10
    assert [int(c["t"][0]) for c in den.calls] == respaced_steps(200, 10)[:-1]
    for c in den.calls:
        assert c["t"].dtype == torch.long and c["t"].shape == (2,)
        assert c["z_t"].shape == (2, 4, D)


def test_ddim_eta0_chain_keeps_eps_constant(true_ids):
    """With the true x0 and eta=0, every visited z_t has the same implied eps_hat (DDIM's deterministic path)."""
    sched = CosineSchedule(100)
    den = FakeDenoiser(true_ids)
    F = 2.0
    DDIMSampler(steps=8, eta=0.0, noise_factor=F).sample(
        den, sched, _cond(2), length=4, generator=torch.Generator().manual_seed(5)
    )
    x0 = den.embed(true_ids).detach()
    eps_hats = []
    for c in den.calls:
        a = sched.alpha_bar_table[int(c["t"][0])].item()
        eps_hats.append((c["z_t"] - math.sqrt(a) * x0) / (F * math.sqrt(1 - a)))
    for e in eps_hats[1:]:
        torch.testing.assert_close(e, eps_hats[0], atol=1e-4, rtol=1e-4)


def test_ddim_eta0_is_deterministic(true_ids):
    sched = CosineSchedule(100)
    g = torch.Generator().manual_seed(9)
    offset = 0.5 * torch.randn(2, 4, D, generator=g)

    class Contracting(FakeDenoiser):
        def forward(self, z_t, t, cond, tgt_mask=None, self_cond=None):  # depends on its input
            return 0.5 * super().forward(z_t, t, cond, tgt_mask, self_cond) + 0.3 * torch.tanh(z_t)

    outs = []
    for _ in range(2):
        den = Contracting(true_ids, offset)
        outs.append(
            DDIMSampler(steps=6, eta=0.0).sample(den, sched, _cond(2), 4, generator=torch.Generator().manual_seed(1))
        )
    assert torch.equal(outs[0].latents, outs[1].latents)
    # the initial noise is the only randomness: a different seed gives a different result
    den = Contracting(true_ids, offset)
    other = DDIMSampler(steps=6, eta=0.0).sample(den, sched, _cond(2), 4, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(other.latents, outs[0].latents)


def test_nfe_caps_at_T(true_ids):
    sched = CosineSchedule(5)
    den = FakeDenoiser(true_ids)
    out = DDIMSampler(steps=50).sample(den, sched, _cond(2), 4)
    assert out.nfe == 5 and len(den.calls) == 5
    assert [int(c["t"][0]) for c in den.calls] == [5, 4, 3, 2, 1]


@pytest.mark.parametrize("sampler_cls", [DDIMSampler, AncestralSampler])
def test_noise_factor_scales_initial_noise(sampler_cls, true_ids):
    sched = CosineSchedule(50)
    first = {}
    for F in (1.0, 3.0):
        den = FakeDenoiser(true_ids)
        sampler_cls(steps=3, noise_factor=F).sample(den, sched, _cond(2), 4, generator=torch.Generator().manual_seed(4))
        first[F] = den.calls[0]["z_t"]
    torch.testing.assert_close(first[3.0], 3.0 * first[1.0])
    expected = torch.randn(2, 4, D, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(first[1.0], expected)


def test_ancestral_noise_factor_scales_injected_noise(true_ids):
    """Second z_t of the ancestral chain: posterior mean + F sqrt(var) noise; with the same generator stream the
    deviation from the mean scales with F (the mean itself is F-dependent through z_T, so compare deviations)."""
    sched = CosineSchedule(50)
    x0 = FakeDenoiser(true_ids).embed(true_ids).detach()
    devs = {}
    for F in (1.0, 2.0):
        den = FakeDenoiser(true_ids)
        AncestralSampler(steps=3, noise_factor=F).sample(den, sched, _cond(2), 4, generator=torch.Generator().manual_seed(6))
        t0, t1 = int(den.calls[0]["t"][0]), int(den.calls[1]["t"][0])
        abar_t = sched.alpha_bar(torch.full((2,), t0), 4)
        abar_s = sched.alpha_bar(torch.full((2,), t1), 4)
        mean, var = NoiseSchedule.posterior(x0, den.calls[0]["z_t"], abar_t, abar_s)
        devs[F] = (den.calls[1]["z_t"] - mean) / var.sqrt()
    torch.testing.assert_close(devs[2.0], 2.0 * devs[1.0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sampler_cls", [DDIMSampler, AncestralSampler])
def test_clamping_snaps_to_table_rows(sampler_cls, true_ids):
    sched = CosineSchedule(50)
    g = torch.Generator().manual_seed(7)
    offset = 0.3 * torch.randn(2, 4, D, generator=g)  # small: nearest row stays the true one
    clean = FakeDenoiser(true_ids).embed(true_ids).detach()

    den = FakeDenoiser(true_ids, offset)
    out = sampler_cls(steps=4, clamp=True).sample(den, sched, _cond(2), 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.latents, clean, atol=1e-6, rtol=0)
    assert torch.equal(out.token_ids, true_ids)

    den = FakeDenoiser(true_ids, offset)
    out = sampler_cls(steps=4, clamp=False).sample(den, sched, _cond(2), 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.latents, clean + offset, atol=1e-6, rtol=0)

    # clamp_from counts 0-based sampling steps: 3 = only the last of 4 steps is clamped
    den = FakeDenoiser(true_ids, offset)
    out = sampler_cls(steps=4, clamp=True, clamp_from=3).sample(den, sched, _cond(2), 4)
    torch.testing.assert_close(out.latents, clean, atol=1e-6, rtol=0)
    den = FakeDenoiser(true_ids, offset)
    out = sampler_cls(steps=4, clamp=True, clamp_from=4).sample(den, sched, _cond(2), 4)
    torch.testing.assert_close(out.latents, clean + offset, atol=1e-6, rtol=0)


def test_clamping_from_later_step_changes_only_later_steps(true_ids):
    """With clamp_from=2 the first two updates use the raw x0 and the rest the clamped one (DDIM eta=0 path)."""
    sched = CosineSchedule(50)
    offset = 0.3 * torch.randn(2, 4, D, generator=torch.Generator().manual_seed(8))
    runs = {}
    for clamp_from in (2, 100):
        den = FakeDenoiser(true_ids, offset)
        DDIMSampler(steps=4, clamp=True, clamp_from=clamp_from).sample(
            den, sched, _cond(2), 4, generator=torch.Generator().manual_seed(3)
        )
        runs[clamp_from] = [c["z_t"] for c in den.calls]
    # inputs to steps 0..2 depend only on updates 0..1, which are unclamped in both runs
    for i in range(3):
        torch.testing.assert_close(runs[2][i], runs[100][i])
    assert not torch.allclose(runs[2][3], runs[100][3])


@pytest.mark.parametrize("sampler_cls", [DDIMSampler, AncestralSampler])
def test_self_conditioning_feedback(sampler_cls, true_ids):
    sched = CosineSchedule(50)
    offset = 0.3 * torch.randn(2, 4, D, generator=torch.Generator().manual_seed(1))
    den = FakeDenoiser(true_ids, offset, self_conditioning=True)
    sampler_cls(steps=4).sample(den, sched, _cond(2), 4)
    first = den.calls[0]["self_cond"]
    assert first is None or torch.all(first == 0)
    for prev, cur in zip(den.calls, den.calls[1:], strict=False):
        assert cur["self_cond"] is not None
        torch.testing.assert_close(cur["self_cond"], prev["out"])  # the previous x0 estimate

    den = FakeDenoiser(true_ids, offset, self_conditioning=False)
    sampler_cls(steps=4).sample(den, sched, _cond(2), 4)
    assert all(c["self_cond"] is None for c in den.calls)


def test_tgt_mask_and_progress_callback_passed_through(true_ids):
    sched = CosineSchedule(50)
    den = FakeDenoiser(true_ids)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    progress = []
    DDIMSampler(steps=5).sample(den, sched, _cond(2), 4, tgt_mask=mask, on_step=lambda i, n: progress.append((i, n)))
    assert progress == [(i, 5) for i in range(1, 6)]
    assert all(torch.equal(c["tgt_mask"], mask) for c in den.calls)


def test_sample_reproducible_with_generator_ancestral(true_ids):
    sched = CosineSchedule(50)
    offset = torch.zeros(2, 4, D)

    class Dep(FakeDenoiser):
        def forward(self, z_t, t, cond, tgt_mask=None, self_cond=None):
            return super().forward(z_t, t, cond, tgt_mask, self_cond) + 0.1 * z_t

    a = AncestralSampler(steps=5).sample(Dep(true_ids, offset), sched, _cond(2), 4, generator=torch.Generator().manual_seed(3))
    b = AncestralSampler(steps=5).sample(Dep(true_ids, offset), sched, _cond(2), 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.latents, b.latents)
