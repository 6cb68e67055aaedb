"""Unrolled denoising: the input after one sampler step from the network's own estimate, and the training pass."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny_continuous import make_batch, make_module, record_calls
from torch import Tensor

from lightning_diffusion import DiffusionLM
from lightning_diffusion.schedules import AdaptiveSchedule, SqrtSchedule
from lightning_diffusion.unrolled_denoising import UnrolledDenoising


def test_a_perfect_denoiser_gives_the_forward_process_with_the_same_noise() -> None:
    schedule = SqrtSchedule(100)
    z0 = torch.randn(3, 5, 4)
    t = torch.tensor([1, 50, 99])
    torch.manual_seed(7)
    got = UnrolledDenoising(gap=0.1).input_at(lambda z, s: z0, z0, t, schedule, noise_factor=4.0)
    torch.manual_seed(7)
    eps = torch.randn_like(z0)  # the draw input_at made for z_t'
    torch.testing.assert_close(got, schedule.q_sample(z0, t, eps, 4.0), atol=1e-5, rtol=1e-5)


def test_the_estimate_is_made_one_gap_earlier_without_gradient_and_steps_deterministically() -> None:
    schedule = SqrtSchedule(100)
    z0 = torch.randn(2, 3, 4, requires_grad=True)
    t = torch.tensor([10, 97])
    seen: list[tuple[Tensor, Tensor, bool]] = []
    estimate = torch.full((2, 3, 4), 0.5)

    def denoise(z: Tensor, s: Tensor) -> Tensor:
        seen.append((z, s, torch.is_grad_enabled()))
        return estimate

    out = UnrolledDenoising(gap=0.05).input_at(denoise, z0, t, schedule)
    ((z_earlier, earlier, grad),) = seen
    assert earlier.tolist() == [15, 100] and not grad  # t + 5, capped at T
    abar_e = schedule.alpha_bar(earlier, 3)[..., None]
    abar_t = schedule.alpha_bar(t, 3)[..., None]
    eps_hat = (z_earlier - abar_e.sqrt() * estimate) / (1 - abar_e).sqrt()
    torch.testing.assert_close(out, abar_t.sqrt() * estimate + (1 - abar_t).sqrt() * eps_hat)


def test_gap_is_at_least_one_step_and_arguments_are_checked() -> None:
    assert UnrolledDenoising(gap=0.001).earlier(torch.tensor([3]), 100).tolist() == [4]
    with pytest.raises(ValueError, match="probability must be in"):
        UnrolledDenoising(probability=1.5)
    with pytest.raises(ValueError, match="gap must be in"):
        UnrolledDenoising(gap=0.0)
    assert not UnrolledDenoising(probability=0.0).applies()
    assert UnrolledDenoising(probability=1.0).applies()


def unrolled_module(unrolled: UnrolledDenoising | None, schedule: Any = None) -> DiffusionLM:
    """A length-predictor encoder-decoder model (no self-conditioning) with ``unrolled`` training."""
    extra = {} if schedule is None else {"schedule": schedule}
    return make_module("encoder_decoder", self_conditioning=False, length_mode=True, unrolled_denoising=unrolled, **extra)


def test_training_denoises_its_own_earlier_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    module = unrolled_module(UnrolledDenoising(probability=1.0, gap=0.1)).train()
    calls = record_calls(module, monkeypatch)
    batch = make_batch(3)
    loss, *_ = module.compute_losses(batch)
    first, second = calls
    assert not first["grad"] and second["grad"]
    assert torch.equal(first["t"], (second["t"] + 4).clamp(max=40))  # gap 0.1 of T = 40
    assert torch.equal(first["tgt_mask"], batch.tgt_mask) and torch.equal(second["tgt_mask"], batch.tgt_mask)
    # The second pass reads the DDIM step from the first pass's estimate, not a fresh draw from the truth.
    abar_e = module.schedule.alpha_bar(first["t"], 5)[..., None]
    abar_t = module.schedule.alpha_bar(second["t"], 5)[..., None]
    eps_hat = (first["z_t"] - abar_e.sqrt() * first["out"]) / (1 - abar_e).sqrt()
    torch.testing.assert_close(second["z_t"], abar_t.sqrt() * first["out"] + (1 - abar_t).sqrt() * eps_hat)
    loss.backward()
    assert all(p.grad is not None for p in module.denoiser.parameters() if p.requires_grad and p.dim() > 1)


def test_validation_and_a_lost_coin_run_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    module = unrolled_module(UnrolledDenoising(probability=1.0)).eval()
    calls = record_calls(module, monkeypatch)
    module.compute_losses(make_batch(3))
    assert len(calls) == 1  # evaluation losses score the noised truth
    module = unrolled_module(UnrolledDenoising(probability=0.0)).train()
    calls = record_calls(module, monkeypatch)
    module.compute_losses(make_batch(3))
    assert len(calls) == 1


def test_the_adaptive_schedule_only_observes_the_noised_truth(monkeypatch: pytest.MonkeyPatch) -> None:
    module = unrolled_module(UnrolledDenoising(probability=1.0), schedule=AdaptiveSchedule(40)).train()
    observed: list[Tensor] = []
    monkeypatch.setattr(module.schedule, "observe", lambda t, error, mask: observed.append(t))
    module.compute_losses(make_batch(3))
    assert observed == []
