"""Corruption processes: sampled marginals match the closed form, the posterior is Bayes' rule, the prior is right."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_diffusion.discrete import AbsorbingCorruption, MaskAndReplaceCorruption, UniformCorruption

V = 5
PROCESSES = [AbsorbingCorruption(), UniformCorruption(), MaskAndReplaceCorruption(0.3)]
IDS = ["absorbing", "uniform", "mask_and_replace"]


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
@pytest.mark.parametrize("alpha", [0.0, 0.35, 0.8])
def test_sampled_marginal_matches_closed_form(process, alpha: float) -> None:
    n = 200_000
    x0 = torch.full((1, n), 2)
    draws = process.sample(x0, torch.full((1, n), alpha), V, torch.Generator().manual_seed(0))
    empirical = torch.bincount(draws.flatten(), minlength=V + 1).double() / n
    closed = process.marginal(F.one_hot(torch.tensor([[2]]), V).float(), torch.tensor([[alpha]]))[0, 0].double()
    assert closed.sum().item() == pytest.approx(1.0)
    assert torch.allclose(empirical, closed, atol=4e-3), (empirical, closed)


def test_at_t1_absorbing_is_all_mask_and_uniform_is_uniform() -> None:
    g = torch.Generator().manual_seed(1)
    prior = AbsorbingCorruption().prior((4, 50), V, torch.device("cpu"), g)
    assert bool((prior == V).all())
    uniform = UniformCorruption().prior((1, 100_000), V, torch.device("cpu"), g)
    assert not bool((uniform == V).any())
    freq = torch.bincount(uniform.flatten(), minlength=V).double() / uniform.numel()
    assert torch.allclose(freq, torch.full((V,), 1 / V, dtype=torch.float64), atol=5e-3)
    mixed = MaskAndReplaceCorruption(0.1).prior((1, 100_000), V, torch.device("cpu"), g)
    assert (mixed == V).double().mean().item() == pytest.approx(0.9, abs=5e-3)


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_steps_compose_to_the_marginal(process) -> None:
    """``sum_{x_s} q(x_t | x_s) q(x_s | x0) = q(x_t | x0)`` for every observed ``x_t``: the step is consistent."""
    a_s, a_t = torch.tensor([[0.7]]), torch.tensor([[0.3]])
    for x0 in range(V):
        p0 = F.one_hot(torch.tensor([[x0]]), V).float()
        q_s = process.marginal(p0, a_s)[0, 0]
        q_t = process.marginal(p0, a_t)[0, 0]
        for x_t in range(V + 1):
            step = process.step_likelihood(torch.tensor([[x_t]]), a_s, a_t, V)[0, 0]
            assert (step * q_s).sum().item() == pytest.approx(q_t[x_t].item(), abs=1e-6)


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_posterior_is_bayes_rule(process) -> None:
    """``sum_{x_t} q(x_s | x_t, x0) q(x_t | x0) = q(x_s | x0)`` and every posterior row sums to 1."""
    a_s, a_t = torch.tensor([[0.6]]), torch.tensor([[0.2]])
    for x0 in range(V):
        p0 = F.one_hot(torch.tensor([[x0]]), V).float()
        q_t = process.marginal(p0, a_t)[0, 0]
        total = torch.zeros(V + 1)
        for x_t in range(V + 1):
            if q_t[x_t] == 0:
                continue
            post = process.posterior(torch.tensor([[x_t]]), p0, a_s, a_t)[0, 0]
            assert post.sum().item() == pytest.approx(1.0, abs=1e-6)
            total += q_t[x_t] * post
        assert torch.allclose(total, process.marginal(p0, a_s)[0, 0], atol=1e-6)


def test_absorbing_reverse_step_matches_the_generic_posterior() -> None:
    """The closed form (unmask with probability ``(alpha_s - alpha_t) / (1 - alpha_t)``) is the base posterior."""
    process = AbsorbingCorruption()
    a_s, a_t = torch.tensor([[0.6]]), torch.tensor([[0.2]])
    p0 = torch.tensor([[[0.1, 0.2, 0.3, 0.4, 0.0]]])
    post = process.posterior(torch.tensor([[V]]), p0, a_s, a_t)[0, 0]
    unmask = (0.6 - 0.2) / (1 - 0.2)
    assert torch.allclose(post, torch.cat([unmask * p0[0, 0], torch.tensor([1 - unmask])]), atol=1e-6)
    n = 100_000
    x_t = torch.full((1, n), V)
    draws = process.reverse_step(x_t, p0.expand(1, n, V), a_s.expand(1, n), a_t.expand(1, n), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws.flatten(), minlength=V + 1).double() / n
    assert torch.allclose(freq, post.double(), atol=5e-3)
    # Unmasked tokens never change.
    kept = process.reverse_step(torch.tensor([[3]]), p0, a_s, a_t)
    assert kept.item() == 3


def test_replace_fraction_is_checked() -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        MaskAndReplaceCorruption(0.0)
