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
    NeighbourUnlikelihood,
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
        hidden=logits,
        head=lambda hidden: hidden,  # the "hidden states" are the logits here
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


def unlikely(row: list[float], negative: int) -> float:
    """``-log(1 - softmax(row)[negative])`` written out."""
    z = sum(math.exp(v) for v in row)
    return -math.log(1.0 - math.exp(row[negative]) / z)


def test_neighbour_unlikelihood_by_hand() -> None:
    # x0 = [0, 1]; both masked: position 0 is penalised for its right neighbour's word 1, position 1 for its left
    # neighbour's word 0; the token-level mean divides by the 2 masked tokens.
    term = NeighbourUnlikelihood()
    both = term(inputs([V, V], 0.5))
    assert both.item() == pytest.approx((unlikely([2, 0, 0], 1) + unlikely([0, 1, 0], 0)) / 2, rel=1e-6)
    # Only position 0 masked: it alone is scored, still against its clean neighbour's word.
    assert term(inputs([V, 1], 0.5)).item() == pytest.approx(unlikely([2, 0, 0], 1), rel=1e-6)
    assert term(inputs([0, 1], 0.5)).item() == 0.0  # nothing masked, nothing scored


def test_neighbour_unlikelihood_leaves_repeated_words_and_padding_alone() -> None:
    # x0 = [2, 2, 1, pad]: positions 0 and 1 hold the same word (no penalty between them); position 3 is not a real
    # target position, so position 2 has no right neighbour.
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 2.0], [0.5, 0.0, 3.0], [9.0, 9.0, 9.0]]])
    schedule = LinearMasking()
    t = torch.tensor([0.5])
    loss = NeighbourUnlikelihood()(
        DiscreteLossInputs(
            x0=torch.tensor([[2, 2, 1, 0]]),
            x_t=torch.tensor([[V, V, V, 0]]),
            hidden=logits,
            head=lambda h: h,
            mask=torch.tensor([[True, True, True, False]]),
            t=t,
            alpha_t=schedule.alpha(t).expand(1, 4),
            rate_t=schedule.rate(t).expand(1, 4),
            alpha_at=lambda s: schedule.alpha(s).expand(1, 4),
            corruption=AbsorbingCorruption(),
            mask_id=V,
        )
    )
    expected = (unlikely([1.0, 0.0, 2.0], 1) + unlikely([0.5, 0.0, 3.0], 2)) / 3  # positions 1 and 2; 0 has none
    assert loss.item() == pytest.approx(expected, rel=1e-6)


class CountingHead:
    """An identity output head that records how many rows it was asked for."""

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        self.rows += hidden.reshape(-1, hidden.shape[-1]).shape[0]
        return hidden


@pytest.mark.parametrize(
    "term", [ReweightedCrossEntropy(floor=0.5), MaskedDiffusionELBO(label_smoothing=0.1), NeighbourUnlikelihood()]
)
def test_terms_on_corrupted_positions_run_the_head_there_only(term) -> None:
    # 2 x 5 positions, 4 of them masked: the head sees 4 rows, and the loss equals the one on full logits.
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, V, requires_grad=True)
    x0 = torch.tensor([[0, 1, 2, 0, 1], [2, 2, 1, 0, 0]])
    x_t = torch.tensor([[V, 1, 2, V, 1], [2, V, 1, 0, V]])
    schedule = LinearMasking()
    t = torch.tensor([0.4, 0.6])
    head = CountingHead()
    fields = dict(
        x0=x0,
        x_t=x_t,
        mask=torch.ones(2, 5, dtype=torch.bool),
        t=t,
        alpha_t=schedule.alpha(t).expand(2, 5),
        rate_t=schedule.rate(t).expand(2, 5),
        alpha_at=lambda s: schedule.alpha(s).expand(2, 5),
        corruption=AbsorbingCorruption(),
        mask_id=V,
    )
    sparse = term(DiscreteLossInputs(hidden=hidden, head=head, **fields))
    assert head.rows == 4
    full_inputs = DiscreteLossInputs(hidden=hidden, head=lambda h: h, **fields)
    _ = full_inputs.logits  # computed for every position first: the corrupted rows are then taken from it
    full = term(full_inputs)
    assert torch.allclose(sparse, full)
    (grad,) = torch.autograd.grad(sparse.sum(), hidden)
    assert grad[x_t != V].abs().sum() == 0 and grad[x_t == V].abs().sum() > 0  # clean positions get no gradient
