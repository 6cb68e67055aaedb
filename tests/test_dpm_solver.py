"""DPM-Solver++ (first order and 2M), logSNR step placement, asymmetric time intervals (``time_difference``) on
every continuous sampler, and ``--sampler DPMSolverPP`` through ``generate`` and ``--decoding.sampler``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RECIPES_DIR, TinyData, fit_tiny, make_tiny_overrides
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from lightning_diffusion.decoding import carry_over_sampler
from lightning_diffusion.denoisers.base import Denoiser
from lightning_diffusion.samplers import (
    AncestralSampler,
    DDIMSampler,
    DPMSolverPP,
    Sampler,
    StepContext,
    asymmetric_target,
    logsnr_steps,
    nearest_embedding,
    respaced_steps,
    round_to_tokens,
)
from lightning_diffusion.schedules import (
    AdaptiveSchedule,
    CosineSchedule,
    LinearSchedule,
    NoiseSchedule,
    SqrtSchedule,
)
from lightning_diffusion.types import Conditioning

V, D = 6, 8
TRUE_IDS = torch.tensor([[0, 3, 5, 1, 4], [2, 2, 4, 0, 1]])  # [B = 2, L = 5]


class OracleDenoiser(Denoiser):
    """Returns ``Emb(true_ids) (+ offset + mix * tanh(z_t))`` whatever its input; records every call."""

    def __init__(
        self,
        true_ids: Tensor = TRUE_IDS,
        offset: Tensor | None = None,
        mix: float = 0.0,
        self_conditioning: bool = False,
    ) -> None:
        super().__init__(V, D, self_conditioning=self_conditioning)
        with torch.no_grad():
            self.word_embedding.weight.copy_(3.0 * torch.eye(V, D))  # equal-norm orthogonal rows
        self.true_ids = true_ids
        self.offset = offset
        self.mix = mix
        self.calls: list[dict[str, Tensor]] = []

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Conditioning:
        raise NotImplementedError

    def forward(self, z_t, t, cond, tgt_mask=None, self_cond=None):
        x0 = self.embed(self.true_ids)
        if self.offset is not None:
            x0 = x0 + self.offset
        if self.mix:
            x0 = x0 + self.mix * torch.tanh(z_t)  # depends on its input: errors compound along the chain
        self.calls.append({"z_t": z_t.clone(), "t": t.clone(), "out": x0.clone()})
        return x0

    def clean(self) -> Tensor:
        return self.embed(self.true_ids).detach()


def _cond(b: int = 2) -> Conditioning:
    return Conditioning(hidden=torch.zeros(b, 3, 1), mask=torch.ones(b, 3, dtype=torch.bool))


def _adaptive(num_steps: int = 200, length: int = 5, base: type = SqrtSchedule) -> AdaptiveSchedule:
    """A real per-position schedule: column ``p`` is ``base``'s table to the power ``1 + 0.6 p`` (monotone, 1 at 0)."""
    sched = AdaptiveSchedule(num_steps, max_length=length)
    powers = 1.0 + 0.6 * torch.arange(length, dtype=torch.float64)
    with torch.no_grad():
        sched.alpha_bar_table.copy_((base(num_steps).alpha_bar_table.double()[:, None] ** powers).float())
    return sched


def _sample(sampler: Sampler, den: Denoiser, sched: NoiseSchedule, seed: int = 0, length: int = 5) -> Any:
    return sampler.sample(den, sched, _cond(), length, generator=torch.Generator().manual_seed(seed))


def _lambda(a: float) -> float:
    """DPM-Solver's half logSNR ``0.5 log(abar / (1 - abar))``."""
    return 0.5 * math.log(a / (1.0 - a))


SCHEDULES = {
    "cosine": lambda: CosineSchedule(200),
    "sqrt": lambda: SqrtSchedule(200),
    "adaptive": lambda: _adaptive(200),
}


# ---------------------------------------------------------------- the oracle: the true x0 at every call


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("spacing", ["time", "logsnr"])
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("steps", [1, 2, 5, 12])
def test_oracle_denoiser_recovers_x0(schedule, spacing, order, steps):
    sched = SCHEDULES[schedule]()
    den = OracleDenoiser()
    sampler = DPMSolverPP(steps=steps, order=order, spacing=spacing, noise_factor=2.0)
    out = _sample(sampler, den, sched)
    torch.testing.assert_close(out.latents, den.clean(), atol=1e-5, rtol=0)
    assert torch.equal(out.token_ids, TRUE_IDS)
    chain = sampler.chain(sched, 5)
    assert out.nfe == len(chain) - 1 == len(den.calls) == steps  # NFE = the chain's length, T = 200 >= steps
    assert [int(c["t"][0]) for c in den.calls] == chain[:-1]


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("td", [0.0, 0.4, 1.0, 3.0])
def test_oracle_recovers_x0_with_time_difference(order, td):
    den = OracleDenoiser()
    out = _sample(DPMSolverPP(steps=6, order=order, time_difference=td), den, _adaptive(100))
    torch.testing.assert_close(out.latents, den.clean(), atol=1e-5, rtol=0)
    assert torch.equal(out.token_ids, TRUE_IDS)


def test_oracle_2m_follows_the_ddim_path_exactly():
    """With the true x0 every time, ``D = x0 + (x0 - x0_prev) / (2 r) = x0``: 2M walks DDIM's deterministic path."""
    sched = CosineSchedule(100)
    runs = {}
    for sampler in (DPMSolverPP(steps=7, order=2), DDIMSampler(steps=7)):
        den = OracleDenoiser()
        _sample(sampler, den, sched, seed=3)
        runs[type(sampler).__name__] = [c["z_t"] for c in den.calls]
    assert all(torch.equal(a, b) for a, b in zip(runs["DPMSolverPP"], runs["DDIMSampler"], strict=True))


# ---------------------------------------------------------------- first order is DDIM


@pytest.mark.parametrize("clamp", [False, True])
@pytest.mark.parametrize("td", [0.0, 0.5])
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_order_1_equals_ddim_exactly(clamp, td, schedule):
    sched = SCHEDULES[schedule]()
    offset = 0.4 * torch.randn(2, 5, D, generator=torch.Generator().manual_seed(1))
    outs = []
    for sampler in (
        DPMSolverPP(steps=6, order=1, clamp=clamp, clamp_from=2, noise_factor=3.0, time_difference=td),
        DDIMSampler(steps=6, eta=0.0, clamp=clamp, clamp_from=2, noise_factor=3.0, time_difference=td),
    ):
        outs.append(_sample(sampler, OracleDenoiser(offset=offset, mix=0.3), sched, seed=2))
    assert torch.equal(outs[0].latents, outs[1].latents) and torch.equal(outs[0].token_ids, outs[1].token_ids)


def test_order_1_step_equals_ddim_step_bitwise():
    sched = CosineSchedule(100)
    g = torch.Generator().manual_seed(4)
    z_t, x0, noise = (torch.randn(2, 5, D, generator=g) for _ in range(3))
    for t, s in [(100, 60), (40, 39), (7, 0)]:
        abar_t = sched.alpha_bar(torch.full((2,), t), 5)
        abar_s = sched.alpha_bar(torch.full((2,), s), 5)
        ours = DPMSolverPP(order=1, noise_factor=2.0).step(z_t, x0, abar_t, abar_s, noise)
        assert torch.equal(ours, DDIMSampler(noise_factor=2.0).step(z_t, x0, abar_t, abar_s, noise))


def test_order_2_differs_from_ddim_with_an_imperfect_denoiser():
    sched = CosineSchedule(100)
    outs = [
        _sample(sampler, OracleDenoiser(mix=0.5), sched, seed=2).latents
        for sampler in (DPMSolverPP(steps=6, order=2), DDIMSampler(steps=6))
    ]
    assert not torch.allclose(outs[0], outs[1])


# ---------------------------------------------------------------- 2M by hand


class TableSchedule(NoiseSchedule):
    """``alpha_bar`` from a given table ``[a_0, ..., a_T]``, shared by all positions; records the steps asked."""

    def __init__(self, levels: list[float]) -> None:
        super().__init__(len(levels) - 1)
        self.register_buffer("table", torch.tensor(levels))
        self.asked: list[int] = []

    def alpha_bar(self, t: Tensor, length: int) -> Tensor:
        self.asked.append(int(t[0]))
        return self.table[t].unsqueeze(-1).expand(-1, length)


class ScriptedDenoiser(Denoiser):
    """Latent width 1; call ``k`` returns ``outputs[k]`` at every position."""

    def __init__(self, outputs: list[float]) -> None:
        super().__init__(2, 1)
        self.outputs = outputs
        self.labels: list[int] = []

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Conditioning:
        raise NotImplementedError

    def forward(self, z_t, t, cond, tgt_mask=None, self_cond=None):
        value = self.outputs[len(self.labels)]
        self.labels.append(int(t[0]))
        return torch.full_like(z_t, value)


@pytest.mark.parametrize("F", [1.0, 2.0])
def test_2m_two_step_chain_hand_case(F):
    """Chain ``2 -> 1 -> 0`` on a schedule with ``abar_0 < 1``, so the last update is second order.

    With ``lambda_i = 0.5 log(a_i / (1 - a_i))``, ``sigma_i = F sqrt(1 - a_i)``, estimates ``xA`` (at step 2) and
    ``xB`` (at step 1), and ``z_2`` the initial noise:

    - first order:  ``z_1 = (sigma_1 / sigma_2) z_2 - sqrt(a_1) (exp(-h_1) - 1) xA``, ``h_1 = lambda_1 - lambda_2``;
    - 2M:           ``r = h_1 / h_0`` with ``h_0 = lambda_0 - lambda_1``,
                    ``D = (1 + 1 / (2 r)) xB - 1 / (2 r) xA``,
                    ``z_0 = (sigma_0 / sigma_1) z_1 - sqrt(a_0) (exp(-h_0) - 1) D``.
    """
    a0, a1, a2 = 0.9, 0.6, 0.1
    xa, xb = 0.7, -0.4
    sched = TableSchedule([a0, a1, a2])
    den = ScriptedDenoiser([xa, xb])
    sampler = DPMSolverPP(steps=2, order=2, noise_factor=F)
    out = sampler.sample(den, sched, _cond(1), 1, generator=torch.Generator().manual_seed(5))
    z2 = F * torch.randn(1, 1, 1, generator=torch.Generator().manual_seed(5)).item()
    lam0, lam1, lam2 = _lambda(a0), _lambda(a1), _lambda(a2)
    h1, h0 = lam1 - lam2, lam0 - lam1
    z1 = math.sqrt((1 - a1) / (1 - a2)) * z2 - math.sqrt(a1) * (math.exp(-h1) - 1) * xa
    r = h1 / h0
    d = (1 + 1 / (2 * r)) * xb - 1 / (2 * r) * xa
    z0 = math.sqrt((1 - a0) / (1 - a1)) * z1 - math.sqrt(a0) * (math.exp(-h0) - 1) * d
    assert den.labels == [2, 1] and out.nfe == 2
    assert out.latents.item() == pytest.approx(z0, rel=1e-5, abs=1e-6)
    # first order instead: the last update uses xB itself
    den = ScriptedDenoiser([xa, xb])
    first = DPMSolverPP(steps=2, order=1, noise_factor=F).sample(
        den, sched, _cond(1), 1, generator=torch.Generator().manual_seed(5)
    )
    z0_first = math.sqrt((1 - a0) / (1 - a1)) * z1 - math.sqrt(a0) * (math.exp(-h0) - 1) * xb
    assert first.latents.item() == pytest.approx(z0_first, rel=1e-5, abs=1e-6)
    assert abs(z0 - z0_first) > 0.05


def test_2m_update_hand_case_on_scalars():
    """``update`` with the previous estimate in its :class:`StepContext` (the values of the hand case above)."""
    a_prev, a_t, a_s = 0.1, 0.6, 0.9
    z_t, x0, x0_prev = 0.3, -0.4, 0.7
    context = StepContext(1, 2, 1, 0, 0, torch.tensor([[[x0_prev]]]), torch.tensor([[a_prev]]))
    out = DPMSolverPP(order=2).update(
        torch.tensor([[[z_t]]]), torch.tensor([[[x0]]]), torch.tensor([[a_t]]), torch.tensor([[a_s]]),
        torch.zeros(1, 1, 1), context,
    )  # fmt: skip
    h_prev, h = _lambda(a_t) - _lambda(a_prev), _lambda(a_s) - _lambda(a_t)
    d = x0 + h / (2 * h_prev) * (x0 - x0_prev)
    expected = math.sqrt((1 - a_s) / (1 - a_t)) * z_t - math.sqrt(a_s) * (math.exp(-h) - 1) * d
    assert out.item() == pytest.approx(expected, rel=1e-5)


def test_2m_update_into_step_0_is_first_order():
    """``abar_s = 1``: ``lambda_s = +inf`` and ``1 / (2 r)`` is undefined; the update lands on ``x0_hat`` (as DDIM)."""
    context = StepContext(1, 2, 1, 0, 0, torch.tensor([[[0.7]]]), torch.tensor([[0.1]]))
    out = DPMSolverPP(order=2).update(
        torch.tensor([[[0.3]]]), torch.tensor([[[-0.4]]]), torch.tensor([[0.6]]), torch.tensor([[1.0]]),
        torch.zeros(1, 1, 1), context,
    )  # fmt: skip
    assert out.item() == pytest.approx(-0.4, abs=1e-7)


# ---------------------------------------------------------------- logSNR placement


def _log_snr(sched: NoiseSchedule, steps: list[int], length: int = 5) -> Tensor:
    abar = sched.alpha_bar(torch.tensor(steps), length).double()
    return (abar.log() - torch.log1p(-abar)).mean(-1)


PLACED = {
    "cosine": CosineSchedule,
    "sqrt": SqrtSchedule,
    "linear": LinearSchedule,
    "adaptive": lambda T: _adaptive(T),
}


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(PLACED)), T=st.integers(1, 400), K=st.integers(1, 450))
def test_logsnr_steps_properties(name, T, K):
    chain = logsnr_steps(PLACED[name](T), K, 5)
    assert chain[0] == T and chain[-1] == 0
    assert all(a > b for a, b in zip(chain, chain[1:], strict=False))
    assert len(chain) == min(K, T) + 1  # as respaced_steps: the NFE a decoding reports holds
    assert all(isinstance(x, int) for x in chain)


@pytest.mark.parametrize("T", [1, 7, 50])
def test_logsnr_steps_full_and_single(T):
    sched = CosineSchedule(T)
    assert logsnr_steps(sched, T, 5) == list(range(T, -1, -1)) == logsnr_steps(sched, 10 * T, 5)
    assert logsnr_steps(sched, 1, 5) == [T, 0]
    with pytest.raises(ValueError, match="steps"):
        logsnr_steps(sched, 0, 5)


@pytest.mark.parametrize("K", [5, 10, 20])
def test_logsnr_steps_are_evenly_spaced_in_logsnr(K):
    """Linear schedule, T = 2000: every step is the integer step nearest in logSNR to its evenly spaced target,
    from step T's value to step 1's; where the integer grid is fine the gaps are within 5% of the even gap."""
    sched = LinearSchedule(2000)
    chain = logsnr_steps(sched, K, 5)
    assert len(chain) == K + 1 and chain[-2] == 1
    curve = _log_snr(sched, list(range(1, 2001)))  # [T] at steps 1..T
    targets = torch.linspace(float(curve[-1]), float(curve[0]), K, dtype=torch.float64)
    assert chain[:-1] == ((curve[None, :] - targets[:, None]).abs().argmin(-1) + 1).tolist()
    values = _log_snr(sched, chain[:-1])
    gaps = values[1:] - values[:-1]
    even = (values[-1] - values[0]) / (K - 1)
    fine = (
        _log_snr(sched, [t - 1 for t in chain[:-2]]) - values[:-1]
    ) < 0.01 * even  # one step is 1% of a gap
    assert fine.sum() >= K // 2
    assert torch.all((gaps - even).abs()[fine] < 0.05 * even), (chain, gaps)


def test_logsnr_steps_per_position_schedule_uses_the_mean_over_the_canvas():
    """Adaptive schedule with column ``p`` = the linear table to the power ``1 + 0.6 p``: the steps are placed by
    the mean of the positions' logSNR over the canvas (not by the mean ``abar``, not by one position)."""
    sched = _adaptive(2000, length=4, base=LinearSchedule)
    for K in (4, 8, 12):
        chain = logsnr_steps(sched, K, 4)
        curve = _log_snr(sched, list(range(1, 2001)), length=4)  # [T] mean over the 4 positions
        targets = torch.linspace(float(curve[-1]), float(curve[0]), K, dtype=torch.float64)
        assert chain[:-1] == ((curve[None, :] - targets[:, None]).abs().argmin(-1) + 1).tolist()
        abar = sched.alpha_bar(torch.arange(1, 2001), 4).double().mean(-1)
        assert chain != logsnr_steps(TableSchedule([1.0, *abar.tolist()]), K, 4)  # mean abar: another chain
        # a one-position canvas is placed by its own column
        assert logsnr_steps(sched, K, 1) == logsnr_steps(LinearSchedule(2000), K, 1) != chain


def test_logsnr_spacing_is_the_sampler_chain():
    sched = CosineSchedule(300)
    assert DPMSolverPP(steps=7, spacing="logsnr").chain(sched, 5) == logsnr_steps(sched, 7, 5)
    assert (
        DPMSolverPP(steps=7).chain(sched, 5) == respaced_steps(300, 7) == DDIMSampler(steps=7).chain(sched, 5)
    )


# ---------------------------------------------------------------- time_difference (asymmetric time intervals)


def test_asymmetric_target_hand_cases():
    assert asymmetric_target(20, 10, 0.0) == 10
    assert asymmetric_target(20, 10, 0.25) == 8  # 10 - 2.5 = 7.5, halves go up
    assert asymmetric_target(20, 10, 0.3) == 7
    assert asymmetric_target(20, 10, 1.0) == 0
    assert asymmetric_target(20, 10, 5.0) == 0  # never below 0
    assert asymmetric_target(20, 0, 0.5) == 0


def _pre_refactor_sample(
    sampler: Sampler, den: Denoiser, sched: NoiseSchedule, seed: int, length: int = 5
) -> Tensor:
    """The sampling loop as it was before ``time_difference``, ``update`` and ``chain`` (a copy, to pin outputs)."""
    g = torch.Generator().manual_seed(seed)
    shape = (2, length, den.latent_dim)
    z = sampler.noise_factor * torch.randn(shape, generator=g)
    chain = respaced_steps(sched.num_steps, sampler.steps)
    table = den.embedding_table() if sampler.clamp else None
    x0_prev = None
    with torch.no_grad():
        for i, (t, s) in enumerate(zip(chain[:-1], chain[1:], strict=True)):
            t_vec = torch.full((2,), t, dtype=torch.long)
            x0 = den(z, t_vec, _cond(), None, x0_prev if den.self_conditioning else None)
            x0_prev = x0
            if table is not None and i >= sampler.clamp_from:
                x0 = nearest_embedding(x0, table, sampler.chunk_rows)
            abar_t = sched.alpha_bar(t_vec, length)
            abar_s = sched.alpha_bar(torch.full_like(t_vec, s), length)
            noise = torch.randn(shape, generator=g) if s > 0 else torch.zeros(shape)
            z = sampler.step(z, x0, abar_t, abar_s, noise)
        return torch.cat([z.flatten(), round_to_tokens(den, z).flatten().float()])


@pytest.mark.parametrize(
    "sampler",
    [DDIMSampler(steps=6), DDIMSampler(steps=5, eta=0.5, clamp=True, clamp_from=1, noise_factor=2.0),
     AncestralSampler(steps=6), AncestralSampler(steps=4, clamp=True, noise_factor=3.0)],
    ids=["ddim", "ddim-eta-clamp", "ancestral", "ancestral-clamp"],
)  # fmt: skip
@pytest.mark.parametrize("self_conditioning", [False, True])
def test_time_difference_0_is_bit_identical_to_the_former_loop(sampler, self_conditioning):
    offset = 0.3 * torch.randn(2, 5, D, generator=torch.Generator().manual_seed(9))
    sched = _adaptive(60)
    assert sampler.time_difference == 0.0
    out = _sample(
        sampler, OracleDenoiser(offset=offset, mix=0.4, self_conditioning=self_conditioning), sched, seed=7
    )
    expected = _pre_refactor_sample(
        sampler, OracleDenoiser(offset=offset, mix=0.4, self_conditioning=self_conditioning), sched, seed=7
    )
    assert torch.equal(torch.cat([out.latents.flatten(), out.token_ids.flatten().float()]), expected)


@pytest.mark.parametrize("sampler_cls", [DDIMSampler, AncestralSampler, DPMSolverPP])
def test_time_difference_moves_latents_to_the_shifted_target(sampler_cls):
    """Labels stay on the chain, the levels used are ``abar(t)`` and ``abar(s')``, and each next ``z_t`` is the
    sampler's update of the previous one to ``s'``."""
    levels = CosineSchedule(40).alpha_bar_table.tolist()
    sched = TableSchedule(levels)
    td = 0.5
    sampler = sampler_cls(steps=5, time_difference=td)
    den = OracleDenoiser(mix=0.3)
    out = _sample(sampler, den, sched, seed=11)
    chain = respaced_steps(40, 5)  # [40, 30, 20, 11, 1, 0]
    targets = [asymmetric_target(t, s, td) for t, s in zip(chain[:-1], chain[1:], strict=True)]
    assert targets == [25, 15, 7, 0, 0]
    assert [int(c["t"][0]) for c in den.calls] == chain[:-1]  # the denoiser is told the chain's steps
    assert sched.asked == [x for pair in zip(chain[:-1], targets, strict=True) for x in pair]
    if sampler_cls is DDIMSampler:  # deterministic: recompute every update from the recorded calls
        zs = [c["z_t"] for c in den.calls] + [out.latents]
        for i, (t, target) in enumerate(zip(chain[:-1], targets, strict=True)):
            abar_t = torch.full((2, 5), levels[t])
            abar_s = torch.full((2, 5), levels[target])
            expected = sampler.step(zs[i], den.calls[i]["out"], abar_t, abar_s, torch.zeros(2, 5, D))
            torch.testing.assert_close(zs[i + 1], expected)


def test_time_difference_with_the_oracle_lands_on_the_forward_process_at_s_prime():
    """DDIM with the true x0: after the first update the latents are exactly ``q(z_s' | x0)`` in the noise direction
    implied by the initial latents, i.e. less noisy than the label ``s`` the denoiser is given next."""
    sched = CosineSchedule(100)
    den = OracleDenoiser()
    F = 2.0
    _sample(DDIMSampler(steps=4, noise_factor=F, time_difference=0.5), den, sched, seed=1)
    chain = respaced_steps(100, 4)  # [100, 67, 34, 1, 0]
    s_prime = asymmetric_target(chain[0], chain[1], 0.5)
    assert s_prime == 51 and int(den.calls[1]["t"][0]) == 67
    x0 = den.clean()
    a_first = sched.alpha_bar_table[100].item()
    eps_hat = (den.calls[0]["z_t"] - math.sqrt(a_first) * x0) / (F * math.sqrt(1 - a_first))
    expected = sched.q_sample(x0, torch.full((2,), s_prime), eps_hat, F)
    torch.testing.assert_close(den.calls[1]["z_t"], expected, atol=1e-5, rtol=1e-5)


def test_previous_estimate_is_per_call():
    """The solver's history lives in each ``sample`` call: one instance decoding twice gives the same result, and a
    run between two others does not change them."""
    sched = CosineSchedule(100)
    sampler = DPMSolverPP(steps=6)
    first = _sample(sampler, OracleDenoiser(mix=0.5), sched, seed=4).latents
    _sample(sampler, OracleDenoiser(mix=-0.7, offset=torch.ones(2, 5, D)), sched, seed=8)
    again = _sample(sampler, OracleDenoiser(mix=0.5), sched, seed=4).latents
    assert torch.equal(first, again)
    assert set(vars(sampler)) == {
        "steps",
        "clamp",
        "clamp_from",
        "noise_factor",
        "time_difference",
        "order",
        "spacing",
    }


# ---------------------------------------------------------------- settings


def test_describe_strings():
    assert DPMSolverPP(steps=5).describe() == "DPMSolverPP(steps=5, noise_factor=1.0, order=2, spacing=time)"
    assert (
        DPMSolverPP(
            steps=5,
            order=1,
            spacing="logsnr",
            clamp=True,
            clamp_from=2,
            noise_factor=2.0,
            time_difference=0.5,
        ).describe()
        == "DPMSolverPP(steps=5, clamp from step 2, noise_factor=2.0, time_difference=0.5, order=1, spacing=logsnr)"
    )
    # time_difference appears only when it is not 0
    assert DDIMSampler(steps=3).describe() == "DDIMSampler(steps=3, noise_factor=1.0, eta=0.0)"
    assert DDIMSampler(steps=3, time_difference=1.0).describe() == (
        "DDIMSampler(steps=3, noise_factor=1.0, time_difference=1.0, eta=0.0)"
    )
    assert AncestralSampler(steps=4, time_difference=0.2).describe() == (
        "AncestralSampler(steps=4, noise_factor=1.0, time_difference=0.2)"
    )


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: DPMSolverPP(order=3), "order must be 1 or 2"),
        (lambda: DPMSolverPP(order=0), "order must be 1 or 2"),
        (lambda: DPMSolverPP(order=True), "order must be 1 or 2"),
        (lambda: DPMSolverPP(spacing="karras"), "spacing must be 'time' or 'logsnr'"),
        (lambda: DPMSolverPP(time_difference=-0.1), "time_difference must be a finite number >= 0"),
        (lambda: DDIMSampler(time_difference=-1.0), "time_difference must be a finite number >= 0"),
        (
            lambda: AncestralSampler(time_difference=float("nan")),
            "time_difference must be a finite number >= 0",
        ),
        (lambda: DPMSolverPP(steps=0), "steps must be >= 1"),
    ],
)
def test_bad_arguments_raise_a_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_switching_sampler_carries_options_over():
    """``--sampler DPMSolverPP`` from a model's DDIM keeps clamp, noise factor and time_difference; drops eta."""
    previous = DDIMSampler(steps=3, eta=0.5, clamp=True, noise_factor=0.8, time_difference=0.5)
    chosen, carried, dropped = carry_over_sampler(previous, DPMSolverPP(3))
    assert isinstance(chosen, DPMSolverPP)
    assert carried == {"clamp": True, "noise_factor": 0.8, "time_difference": 0.5} and dropped == {"eta": 0.5}
    assert (chosen.order, chosen.spacing, chosen.steps) == (2, "time", 3)


# ---------------------------------------------------------------- the command line

QUICKSTART = RECIPES_DIR / "quickstart.yaml"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Path:
    """The quickstart made tiny, 2 training steps."""
    root = tmp_path_factory.mktemp("dpm_solver")
    fit_tiny(root / "run", QUICKSTART, tiny_data, max_steps=2, val_check_interval=2)
    return next((root / "run").rglob("last.ckpt"))


def test_generate_accepts_dpm_solver_by_its_short_name(
    checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_diffusion.cli import main

    capsys.readouterr()
    main(
        [
            "generate",
            str(checkpoint),
            "--sampler",
            "DPMSolverPP",
            "--steps",
            "3",
            "--text+=Tom is here.",
            "--text+=Hi.",
        ]
    )
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2
    assert "decoding: DPMSolverPP(steps=3, noise_factor=1.0, order=2, spacing=time)" in captured.err
    assert "NFE: 3 network evaluations per candidate" in captured.err
    main(["generate", str(checkpoint), "--sampler", "DPMSolverPP", "--sampler.spacing", "logsnr",
          "--sampler.order", "1", "--steps", "5", "--text+=Tom is here."])  # fmt: skip
    err = capsys.readouterr().err
    assert "DPMSolverPP(steps=5, noise_factor=1.0, order=1, spacing=logsnr)" in err and "NFE: 5 " in err


def test_decoding_sampler_flag_accepts_dpm_solver(
    checkpoint: Path, tmp_path: Path, tiny_data: TinyData, run_cli: Any
) -> None:
    overrides = make_tiny_overrides(tmp_path, QUICKSTART, data=tiny_data)
    base = ["validate", "-c", str(QUICKSTART), *overrides, "--ckpt_path", str(checkpoint)]
    cli = run_cli([*base, "--decoding.sampler", "DPMSolverPP", "--decoding.sampler.time_difference", "0.5"])
    settings = cli.model.last_report.settings
    assert settings.startswith(
        "DPMSolverPP(steps=3, noise_factor=1.0, time_difference=0.5, order=2, spacing=time)"
    )
    assert "NFE 3" in settings
