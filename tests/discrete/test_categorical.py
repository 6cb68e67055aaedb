"""Inverse-CDF categorical draws: the right frequencies, never a zero-probability id, shapes and seeding."""

from __future__ import annotations

import pytest
import torch

from lightning_diffusion.discrete.categorical import sample_categorical


def test_frequencies_match_the_probabilities_and_zeros_are_never_drawn() -> None:
    p = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3, 0.0])
    n = 200_000
    ids = sample_categorical(p.expand(n, -1), torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=6).float() / n
    assert freq[[0, 2, 5]].sum() == 0  # zero-probability ids, first and last included
    # 4.5 standard errors of a binomial share at n = 200,000 (0.0011 for p = 0.6 / 0.3): seeded, so no flakiness
    assert torch.allclose(freq, p, atol=0.005)


def test_rows_need_not_be_normalised_and_shapes_are_kept() -> None:
    weights = torch.tensor([[[0.0, 0.0, 5.0]], [[2.0, 0.0, 0.0]]])  # [2, 1, 3]: one certain id per row
    ids = sample_categorical(weights, torch.Generator().manual_seed(1))
    assert ids.shape == (2, 1) and ids.tolist() == [[2], [0]]


def test_seeded_draws_repeat() -> None:
    p = torch.softmax(torch.randn(64, 1000, generator=torch.Generator().manual_seed(2)), -1)
    first = sample_categorical(p, torch.Generator().manual_seed(3))
    assert torch.equal(first, sample_categorical(p, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, sample_categorical(p, torch.Generator().manual_seed(4)))


def test_an_empty_vocabulary_or_a_row_without_mass_is_an_error() -> None:
    with pytest.raises(ValueError, match="V >= 1"):
        sample_categorical(torch.zeros(3, 0))
    with pytest.raises(ValueError, match="positive finite total"):
        sample_categorical(torch.tensor([[0.5, 0.5], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="positive finite total"):
        sample_categorical(torch.tensor([[0.5, float("nan")]]))
