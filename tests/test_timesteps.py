"""Training timestep samplers: uniform and loss-aware importance sampling."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_diffusion.timesteps import LossAwareTimestepSampler, UniformTimestepSampler


def _fill(sampler: LossAwareTimestepSampler, per_step_loss: list[float], times: int) -> None:
    T = sampler.num_steps
    for _ in range(times):
        sampler.update(torch.arange(1, T + 1), torch.tensor(per_step_loss))


def test_uniform_probabilities_and_weights():
    sampler = UniformTimestepSampler(8)
    p = sampler.probabilities()
    assert p.shape == (8,)
    torch.testing.assert_close(p, torch.full((8,), 1 / 8))
    assert p.sum().item() == pytest.approx(1.0)
    t, w = sampler.sample(4000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert t.dtype == torch.long
    assert t.shape == (4000,) and w.shape == (4000,)
    assert int(t.min()) == 1 and int(t.max()) == 8
    assert set(t.tolist()) == set(range(1, 9))
    torch.testing.assert_close(w, torch.ones(4000))


def test_sample_is_reproducible_with_generator():
    sampler = UniformTimestepSampler(100)
    a, _ = sampler.sample(50, torch.device("cpu"), torch.Generator().manual_seed(7))
    b, _ = sampler.sample(50, torch.device("cpu"), torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_uniform_update_is_noop():
    sampler = UniformTimestepSampler(4)
    sampler.update(torch.tensor([1, 2]), torch.tensor([5.0, 1.0]))
    torch.testing.assert_close(sampler.probabilities(), torch.full((4,), 0.25))


def test_loss_aware_uniform_before_warmup():
    T = 4
    sampler = LossAwareTimestepSampler(T, history=10)
    assert not sampler.warmed_up
    _fill(sampler, [1.0, 1.0, 1.0, 50.0], times=9)
    assert not sampler.warmed_up
    torch.testing.assert_close(sampler.probabilities(), torch.full((T,), 0.25))
    # all but one step full: still uniform
    sampler.update(torch.tensor([1, 2, 3]), torch.tensor([1.0, 1.0, 1.0]))
    assert not sampler.warmed_up
    torch.testing.assert_close(sampler.probabilities(), torch.full((T,), 0.25))
    _, w = sampler.sample(16, torch.device("cpu"))
    torch.testing.assert_close(w, torch.ones(16))
    sampler.update(torch.tensor([4]), torch.tensor([50.0]))
    assert sampler.warmed_up


def test_loss_aware_probabilities_hand_computed():
    T = 4
    sampler = LossAwareTimestepSampler(T, history=10, uniform_prob=0.001)
    _fill(sampler, [1.0, 1.0, 1.0, 3.0], times=10)
    assert sampler.warmed_up
    # sqrt(mean L^2) = [1, 1, 1, 3] -> [1/6, 1/6, 1/6, 1/2], mixed with 0.001 uniform
    expected = torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 2]) * 0.999 + 0.001 / 4
    p = sampler.probabilities()
    torch.testing.assert_close(p, expected, atol=1e-6, rtol=1e-6)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert int(p.argmax()) == 3


def test_loss_aware_second_moment_not_mean():
    """p_t ~ sqrt(mean L_t^2): losses alternating 0 and 2 have RMS sqrt(2), not mean 1."""
    T = 2
    sampler = LossAwareTimestepSampler(T, history=4, uniform_prob=0.0)
    for i in range(4):
        sampler.update(torch.tensor([1, 2]), torch.tensor([0.0 if i % 2 else 2.0, 1.0]))
    rms = math.sqrt(2.0)
    expected = torch.tensor([rms / (rms + 1), 1 / (rms + 1)])
    torch.testing.assert_close(sampler.probabilities(), expected, atol=1e-6, rtol=1e-6)


def test_loss_aware_weights_are_inverse_T_p():
    T = 4
    sampler = LossAwareTimestepSampler(T, history=10)
    _fill(sampler, [1.0, 2.0, 3.0, 4.0], times=10)
    p = sampler.probabilities()
    t, w = sampler.sample(2000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert int(t.min()) >= 1 and int(t.max()) <= T
    torch.testing.assert_close(w, 1.0 / (T * p[t - 1]))
    # empirical frequencies follow p
    freq = torch.bincount(t - 1, minlength=T).float() / 2000
    torch.testing.assert_close(freq, p, atol=0.04, rtol=0)
    # importance weights make the estimator unbiased: E_p[w] = 1
    assert (p * (1.0 / (T * p))).sum().item() == pytest.approx(1.0)


def test_loss_aware_concentrates_where_loss_is_large():
    T = 10
    sampler = LossAwareTimestepSampler(T)
    losses = [0.1] * T
    losses[6] = 5.0
    _fill(sampler, losses, times=10)
    p = sampler.probabilities()
    assert int(p.argmax()) == 6
    assert p[6].item() > 0.8
    t, _ = sampler.sample(500, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert (t == 7).float().mean().item() > 0.7


def test_loss_aware_history_rolls_and_keeps_last():
    T = 3
    sampler = LossAwareTimestepSampler(T, history=10)
    fed = [float(i) for i in range(15)]
    for v in fed:
        sampler.update(torch.tensor([2]), torch.tensor([v]))
    assert torch.equal(sampler.loss_history[1], torch.tensor(fed[-10:], dtype=torch.float64))
    assert torch.all(sampler.loss_history[0] == 0) and torch.all(sampler.loss_history[2] == 0)
    assert sampler.history_count.tolist()[1] >= 10
    assert sampler.history_count.tolist()[0] == 0 and sampler.history_count.tolist()[2] == 0


def test_loss_aware_step_T_maps_to_last_row_and_duplicates_in_batch():
    T = 5
    sampler = LossAwareTimestepSampler(T, history=3)
    sampler.update(torch.tensor([5, 5, 1]), torch.tensor([1.0, 2.0, 3.0]))
    assert sampler.loss_history[4, :2].tolist() == [1.0, 2.0]
    assert sampler.loss_history[0, 0].item() == 3.0
    assert sampler.history_count.tolist() == [1, 0, 0, 0, 2]


def test_loss_aware_update_accepts_grad_tensors_and_state_is_checkpointed():
    T = 3
    sampler = LossAwareTimestepSampler(T, history=2)
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    sampler.update(torch.tensor([1, 2, 3]), losses * 2)
    state = sampler.state_dict()
    assert {"loss_history", "history_count"} <= set(state)
    other = LossAwareTimestepSampler(T, history=2)
    other.load_state_dict(state)
    assert torch.equal(other.loss_history, sampler.loss_history)
    assert other.loss_history[:, 0].tolist() == [2.0, 4.0, 6.0]
