"""Noise schedules: tables against independently computed closed forms, forward process, posterior."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from lightning_diffusion.schedules import CosineSchedule, LinearSchedule, NoiseSchedule, SqrtSchedule

SCHEDULES = [LinearSchedule, CosineSchedule, SqrtSchedule]


# ---------------------------------------------------------------- independent references (float64 numpy)


def _rebuild_from_f(f: np.ndarray, max_beta: float = 0.999) -> np.ndarray:
    """improved DDPM's ``betas_for_alpha_bar``: ``beta_t = min(1 - f(t)/f(t-1), max_beta)``, abar[0] = 1."""
    betas = np.minimum(1.0 - f[1:] / f[:-1], max_beta)
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def reference_linear(T: int) -> np.ndarray:
    scale = 1000.0 / T
    betas = np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def cosine_f(T: int, s: float = 0.008) -> np.ndarray:
    t = np.arange(T + 1, dtype=np.float64)
    return np.cos(((t / T + s) / (1.0 + s)) * np.pi / 2) ** 2


def reference_cosine(T: int) -> np.ndarray:
    return _rebuild_from_f(cosine_f(T))


def sqrt_f(T: int, s: float = 1e-4) -> np.ndarray:
    t = np.arange(T + 1, dtype=np.float64)
    return 1.0 - np.sqrt(t / T + s)


def reference_sqrt(T: int) -> np.ndarray:
    return _rebuild_from_f(sqrt_f(T))


REFERENCES = {LinearSchedule: reference_linear, CosineSchedule: reference_cosine, SqrtSchedule: reference_sqrt}


# ---------------------------------------------------------------- tables


@pytest.mark.parametrize("cls", SCHEDULES)
def test_table_shape_start_monotone_end(cls):
    T = 2000
    table = cls(T).alpha_bar_table
    assert table.shape == (T + 1,)
    assert table[0].item() == 1.0
    assert bool((table[1:] < table[:-1]).all()), "alpha_bar must decrease strictly"
    assert 0.0 < table[-1].item() < 0.01
    assert bool(torch.isfinite(table).all())


@pytest.mark.parametrize("cls", SCHEDULES)
@pytest.mark.parametrize("T", [1, 2, 7, 50, 333])
def test_table_valid_for_small_and_odd_T(cls, T):
    table = cls(T).alpha_bar_table
    assert table.shape == (T + 1,)
    assert table[0].item() == 1.0
    assert bool((table[1:] < table[:-1]).all())
    assert table[-1].item() > 0.0


@pytest.mark.parametrize("cls", SCHEDULES)
@pytest.mark.parametrize("T", [100, 2000])
def test_table_matches_reference(cls, T):
    ref = REFERENCES[cls](T)
    table = cls(T).alpha_bar_table.double().numpy()
    np.testing.assert_allclose(table, ref, atol=1e-5, rtol=0)
    # relative accuracy at a few steps as well (the tail is tiny, so absolute error alone says little there)
    for t in (1, T // 4, T // 2, T - 1, T):
        assert table[t] == pytest.approx(ref[t], rel=1e-4)


def test_linear_closed_form_few_steps():
    T = 2000
    table = LinearSchedule(T).alpha_bar_table.double()
    scale = 1000.0 / T
    for t in (1, 2, 10, 500, 2000):
        # beta_k = scale * (1e-4 + (k - 1) / (T - 1) * (0.02 - 1e-4)), k = 1..t
        expected = 1.0
        for k in range(1, t + 1):
            beta = scale * (1e-4 + (k - 1) / (T - 1) * (0.02 - 1e-4))
            expected *= 1.0 - beta
        assert table[t].item() == pytest.approx(expected, abs=1e-5, rel=1e-4)


def test_cosine_closed_form_few_steps():
    """Away from the clipped last step, the cosine table is exactly f(t)/f(0)."""
    T, s = 2000, 0.008

    def f(t):
        return math.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2

    table = CosineSchedule(T).alpha_bar_table.double()
    for t in (1, 10, 500, 1000, 1500, 1999):
        assert table[t].item() == pytest.approx(f(t) / f(0), abs=1e-5, rel=1e-4)
    # the last beta is clipped at 0.999
    assert table[T].item() == pytest.approx(table[T - 1].item() * 0.001, rel=1e-4)


def test_sqrt_closed_form_few_steps():
    """abar(t) = 1 - sqrt(t/T + s) rebuilt through betas (so relative to f(0); DiffuSeq's betas_for_alpha_bar)."""
    T, s = 2000, 1e-4

    def f(t):
        return 1.0 - math.sqrt(t / T + s)

    table = SqrtSchedule(T).alpha_bar_table.double()
    for t in (1, 2, 100, 1000, 1999):
        assert table[t].item() == pytest.approx(f(t) / f(0), abs=1e-5, rel=1e-4)
    # f(T) < 0, so the last beta is clipped at 0.999
    assert table[T].item() == pytest.approx(table[T - 1].item() * 0.001, rel=1e-4)


def test_num_steps_must_be_positive():
    with pytest.raises(ValueError):
        CosineSchedule(0)


# ---------------------------------------------------------------- alpha_bar(t, L)


@pytest.mark.parametrize("cls", SCHEDULES)
def test_alpha_bar_shape_and_values(cls):
    sched = cls(100)
    t = torch.tensor([0, 1, 50, 100])
    abar = sched.alpha_bar(t, 7)
    assert abar.shape == (4, 7)
    for i, step in enumerate(t.tolist()):
        assert torch.all(abar[i] == sched.alpha_bar_table[step])


# ---------------------------------------------------------------- forward process


@pytest.mark.parametrize("cls", SCHEDULES)
@pytest.mark.parametrize("noise_factor", [1.0, 4.0])
def test_q_sample_t0_returns_z0_exactly(cls, noise_factor):
    sched = cls(50)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(3, 5, 4, generator=g)
    noise = torch.randn(3, 5, 4, generator=g)
    out = sched.q_sample(z0, torch.zeros(3, dtype=torch.long), noise, noise_factor)
    assert torch.equal(out, z0)


def test_q_sample_per_example_closed_form():
    sched = SqrtSchedule(100)
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(3, 4, 2, generator=g)
    noise = torch.randn(3, 4, 2, generator=g)
    t = torch.tensor([1, 40, 100])
    F = 2.5
    out = sched.q_sample(z0, t, noise, F)
    for i, step in enumerate(t.tolist()):
        a = sched.alpha_bar_table[step].item()
        expected = math.sqrt(a) * z0[i] + math.sqrt(1 - a) * F * noise[i]
        torch.testing.assert_close(out[i], expected, atol=1e-6, rtol=1e-6)


def test_q_sample_statistics():
    sched = CosineSchedule(200)
    step, F, n = 120, 2.0, 200_000
    abar = sched.alpha_bar_table[step].item()
    z0 = torch.tensor([1.5, -0.5, 0.0, 3.0])
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(n, 1, 4, generator=g)
    samples = sched.q_sample(z0.expand(n, 1, 4), torch.full((n,), step), noise, F)[:, 0]
    sd = math.sqrt(1 - abar) * F
    torch.testing.assert_close(samples.mean(0), math.sqrt(abar) * z0, atol=5 * sd / math.sqrt(n), rtol=0)
    torch.testing.assert_close(samples.var(0), torch.full((4,), sd**2), rtol=0.02, atol=0)


# ---------------------------------------------------------------- posterior


def test_posterior_hand_values():
    abar_t, abar_s = 0.5, 0.8
    x0 = torch.tensor([[[1.0, -2.0]]])
    zt = torch.tensor([[[0.5, 3.0]]])
    mean, var = NoiseSchedule.posterior(x0, zt, torch.tensor([[abar_t]]), torch.tensor([[abar_s]]))
    # beta = 1 - 0.5/0.8 = 0.375
    beta = 0.375
    coef_x0 = math.sqrt(0.8) * beta / 0.5  # 0.670820...
    coef_zt = math.sqrt(0.625) * 0.2 / 0.5  # 0.316227...
    assert coef_x0 == pytest.approx(0.6708203932)
    assert coef_zt == pytest.approx(0.3162277660)
    expected_mean = torch.tensor([[[coef_x0 * 1.0 + coef_zt * 0.5, coef_x0 * -2.0 + coef_zt * 3.0]]])
    torch.testing.assert_close(mean, expected_mean, atol=1e-6, rtol=1e-6)
    assert var.shape == (1, 1, 1)
    assert var.item() == pytest.approx(beta * 0.2 / 0.5)  # 0.15


def test_posterior_per_position_levels():
    """Levels are [B, L]: each position uses its own abar (per-position schedules)."""
    abar_t = torch.tensor([[0.3, 0.6]])
    abar_s = torch.tensor([[0.9, 0.7]])
    x0 = torch.tensor([[[1.0], [1.0]]])
    zt = torch.tensor([[[2.0], [2.0]]])
    mean, var = NoiseSchedule.posterior(x0, zt, abar_t, abar_s)
    for j in range(2):
        at, as_ = abar_t[0, j].item(), abar_s[0, j].item()
        beta = 1 - at / as_
        m = math.sqrt(as_) * beta / (1 - at) * 1.0 + math.sqrt(at / as_) * (1 - as_) / (1 - at) * 2.0
        v = beta * (1 - as_) / (1 - at)
        assert mean[0, j, 0].item() == pytest.approx(m, rel=1e-6)
        assert var[0, j, 0].item() == pytest.approx(v, rel=1e-6)


def test_posterior_to_clean_is_x0_with_zero_variance():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 3, 4, generator=g)
    zt = torch.randn(2, 3, 4, generator=g)
    abar_t = torch.tensor([[0.2, 0.5, 0.9], [0.01, 0.3, 0.7]])
    mean, var = NoiseSchedule.posterior(x0, zt, abar_t, torch.ones(2, 3))
    torch.testing.assert_close(mean, x0, atol=1e-6, rtol=0)
    assert torch.all(var == 0)


def test_posterior_matches_ddpm_one_step_variance():
    """For s = t - 1 on the table, the variance is DDPM's beta_tilde_t = (1-abar_{t-1})/(1-abar_t) beta_t."""
    sched = LinearSchedule(100)
    tab = sched.alpha_bar_table.double()
    for t in (2, 50, 100):
        beta_t = 1 - tab[t] / tab[t - 1]
        beta_tilde = (1 - tab[t - 1]) / (1 - tab[t]) * beta_t
        _, var = NoiseSchedule.posterior(
            torch.zeros(1, 1, 1, dtype=torch.float64),
            torch.zeros(1, 1, 1, dtype=torch.float64),
            tab[t].view(1, 1),
            tab[t - 1].view(1, 1),
        )
        assert var.item() == pytest.approx(beta_tilde.item(), rel=1e-9)


def test_posterior_marginal_monte_carlo():
    """z_t ~ q(z_t|x0) then z_s ~ q(z_s|z_t,x0) must give z_s ~ q(z_s|x0) = N(sqrt(abar_s) x0, 1 - abar_s)."""
    n = 200_000
    abar_t, abar_s, x0v = 0.3, 0.75, 1.7
    g = torch.Generator().manual_seed(4)
    x0 = torch.full((n, 1, 1), x0v, dtype=torch.float64)
    zt = math.sqrt(abar_t) * x0 + math.sqrt(1 - abar_t) * torch.randn(n, 1, 1, generator=g, dtype=torch.float64)
    mean, var = NoiseSchedule.posterior(
        x0, zt, torch.full((n, 1), abar_t, dtype=torch.float64), torch.full((n, 1), abar_s, dtype=torch.float64)
    )
    zs = mean + var.sqrt() * torch.randn(n, 1, 1, generator=g, dtype=torch.float64)
    sd = math.sqrt(1 - abar_s)
    assert zs.mean().item() == pytest.approx(math.sqrt(abar_s) * x0v, abs=5 * sd / math.sqrt(n))
    assert zs.var().item() == pytest.approx(1 - abar_s, rel=0.02)


# ---------------------------------------------------------------- module behaviour


@pytest.mark.parametrize("cls", SCHEDULES)
def test_to_dtype_and_state_dict(cls):
    sched = cls(30)
    assert "alpha_bar_table" in sched.state_dict()
    ref = sched.alpha_bar_table.clone()
    sched64 = copy.deepcopy(sched).to(torch.float64)
    assert sched64.alpha_bar_table.dtype == torch.float64
    assert sched64.alpha_bar(torch.tensor([3]), 2).dtype == torch.float64
    torch.testing.assert_close(sched64.alpha_bar_table.float(), ref)
    # load into a fresh instance
    other = cls(30)
    other.alpha_bar_table.zero_()
    other.load_state_dict(sched.state_dict())
    assert torch.equal(other.alpha_bar_table, ref)


def test_q_sample_float64():
    sched = CosineSchedule(20).to(torch.float64)
    z0 = torch.randn(2, 3, 4, dtype=torch.float64)
    out = sched.q_sample(z0, torch.tensor([5, 20]), torch.randn_like(z0))
    assert out.dtype == torch.float64
