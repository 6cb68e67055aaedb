"""Discrete loss terms against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_diffusion.discrete import (
    AbsorbingCorruption,
    D3PMHybrid,
    DiscreteLossInputs,
    LinearMasking,
    MaskedDiffusionELBO,
    ReweightedCrossEntropy,
    UniformCorruption,
)

V = 3
LOGITS = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # [1, 2, 3]


def inputs(x_t: list[int], t: float, corruption=None, logits: torch.Tensor = LOGITS) -> DiscreteLossInputs:
    schedule = LinearMasking()
    x0 = torch.tensor([[0, 1]])
    tt = torch.tensor([t])
    return DiscreteLossInputs(
        x0=x0,
        x_t=torch.tensor([x_t]),
        logits=logits,
        mask=torch.ones(1, 2, dtype=torch.bool),
        t=tt,
        alpha_t=schedule.alpha(tt).expand(1, 2),
        rate_t=schedule.rate(tt).expand(1, 2),
        alpha_at=lambda s: schedule.alpha(s).expand(1, 2),
        corruption=corruption or AbsorbingCorruption(),
        mask_id=V,
    )


def ce(row: list[float], target: int) -> float:
    return -row[target] + math.log(sum(math.exp(v) for v in row))


def test_masked_elbo_by_hand() -> None:
    # Position 0 masked, position 1 clean; linear schedule at t = 0.5: weight 1/t = 2; divided by 2 positions.
    loss = MaskedDiffusionELBO()(inputs([V, 1], 0.5))
    assert loss.item() == pytest.approx(2 * ce([2, 0, 0], 0) / 2, rel=1e-6)
    assert MaskedDiffusionELBO()(inputs([0, 1], 0.5)).item() == 0.0  # nothing masked, nothing to learn


def test_reweighted_by_hand() -> None:
    term = ReweightedCrossEntropy(floor=0.1, label_smoothing=0.0)
    loss = term(inputs([V, V], 0.5))
    lam = 1 - 0.9 * 0.5
    assert loss.item() == pytest.approx(lam * (ce([2, 0, 0], 0) + ce([0, 1, 0], 1)) / 2, rel=1e-6)
    # Replaced tokens (uniform corruption) count as noisy, clean ones do not.
    loss = term(inputs([2, 1], 0.5, UniformCorruption()))
    assert loss.item() == pytest.approx(lam * ce([2, 0, 0], 0), rel=1e-6)


def test_d3pm_hybrid_first_step_is_the_decoder_nll_and_perfect_prediction_is_free() -> None:
    term = D3PMHybrid(num_steps=10, ce_weight=0.5)
    first = term(inputs([V, 1], 0.05))  # t - 1/T <= 0: L_vb is -log p(x0 | x_t)
    nll = (ce([2, 0, 0], 0) + ce([0, 1, 0], 1)) / 2
    assert first.item() == pytest.approx(nll + 0.5 * nll, rel=1e-5)
    sure = F.one_hot(torch.tensor([[0, 1]]), V).float() * 50
    for corruption in (AbsorbingCorruption(), UniformCorruption()):
        assert term(inputs([V if corruption.has_mask else 2, 1], 0.5, corruption, sure)).item() == pytest.approx(0.0, abs=1e-4)
    # A wrong prediction costs a positive KL.
    assert term(inputs([V, 1], 0.5, logits=-LOGITS)).item() > 0.1
