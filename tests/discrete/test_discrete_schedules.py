"""Masking schedules: endpoints, monotonicity, derivatives, and the spindle statistics in checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_diffusion.discrete import CosineMasking, LinearMasking, SpindleMasking
from lightning_diffusion.discrete.schedules.base import MaskingSchedule


def fitted_spindle(lam: float = 0.3) -> SpindleMasking:
    schedule = SpindleMasking(lam)
    schedule.fit(torch.tensor([1000, 500, 100, 10, 1, 0]))
    return schedule


@pytest.mark.parametrize("schedule", [LinearMasking(), CosineMasking(), fitted_spindle()], ids=["linear", "cosine", "spindle"])
def test_endpoints_monotone_and_derivative(schedule) -> None:
    x0 = torch.arange(6)[None].expand(101, -1)
    t = torch.linspace(0, 1, 101)
    alpha = schedule.alpha(t, x0).expand(101, 6)
    assert torch.allclose(alpha[0], torch.ones(6), atol=1e-6) and torch.allclose(alpha[-1], torch.zeros(6), atol=1e-6)
    assert bool((alpha[1:] <= alpha[:-1] + 1e-6).all())  # every token's alpha is non-increasing in t
    h = 1e-4
    tm = torch.linspace(0.05, 0.95, 19)
    numeric = (schedule.alpha(tm + h, x0[:19]) - schedule.alpha(tm - h, x0[:19])) / (2 * h)
    assert torch.allclose(schedule.alpha_derivative(tm, x0[:19]).expand_as(numeric), numeric.expand_as(numeric), atol=1e-2)


def test_linear_rate_is_one_over_t() -> None:
    t = torch.tensor([0.1, 0.5, 1.0])
    assert torch.allclose(LinearMasking().rate(t).squeeze(-1), 1 / t)
    assert CosineMasking().rate(t).squeeze(-1)[1].item() == pytest.approx(
        0.5 * math.pi * math.cos(math.pi / 4) / math.sin(math.pi / 4)
    )


def test_spindle_masks_informative_tokens_later() -> None:
    schedule = fitted_spindle()
    alpha = schedule.alpha(torch.tensor([0.5]), torch.arange(6)[None])[0]
    assert bool((alpha[1:] >= alpha[:-1]).all()) and alpha[-1] > alpha[0]  # rarer id -> cleaner at t = 0.5
    assert schedule.alpha(torch.tensor([0.5])).item() == pytest.approx(0.5)  # without x0: the linear base


def test_spindle_round_trips_through_a_state_dict() -> None:
    schedule = fitted_spindle()
    fresh = SpindleMasking(0.3)
    assert not fresh.fitted
    fresh.load_state_dict(schedule.state_dict())
    assert fresh.fitted and torch.equal(fresh.information, schedule.information)
    with pytest.raises(RuntimeError, match="no token statistics"):
        SpindleMasking().alpha(torch.tensor([0.5]), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="1/pi"):
        SpindleMasking(lam=0.5)


@pytest.mark.parametrize("schedule", [LinearMasking(), CosineMasking(), SpindleMasking(0.3)], ids=lambda s: type(s).__name__)
def test_time_at_inverts_alpha(schedule) -> None:
    t = torch.linspace(0.0, 1.0, 41)
    assert torch.allclose(schedule.time_at(schedule.alpha(t).reshape(-1)), t, atol=1e-5)


def test_time_at_closed_forms_match_the_generic_bisection() -> None:
    alpha = torch.tensor([0.0, 0.1, 0.29289, 0.5, 0.9, 1.0])
    for schedule in (LinearMasking(), CosineMasking()):
        generic = MaskingSchedule.time_at(schedule, alpha)
        assert torch.allclose(schedule.time_at(alpha), generic, atol=1e-5)
        assert generic[0] == 1.0 and generic[-1] == 0.0  # exact at the ends
    # hand values: cosine masks sin(pi t / 2), so half the tokens masked is t = 1/3, 71% masked is t = 1/2
    assert torch.allclose(CosineMasking().time_at(torch.tensor([0.5, 1 - 2**-0.5])), torch.tensor([1 / 3, 0.5]), atol=1e-6)
