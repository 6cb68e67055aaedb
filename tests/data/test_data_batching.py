"""Tests for lightning_diffusion.data.batching.TokenBudgetBatchSampler."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import DataLoader

from lightning_diffusion.data.batching import TokenBudgetBatchSampler


def random_lengths(n: int, seed: int = 0, high: int = 60) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, high) for _ in range(n)]


def cost(batch: list[int], lengths: list[int]) -> int:
    return len(batch) * max(lengths[i] for i in batch)


def check_epoch(batches: list[list[int]], lengths: list[int], max_tokens: int) -> None:
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        assert batch
        assert cost(batch, lengths) <= max_tokens or len(batch) == 1


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=50), min_size=0, max_size=200),
    max_tokens=st.integers(min_value=1, max_value=300),
    shuffle=st.booleans(),
    seed=st.integers(min_value=0, max_value=5),
    max_batch_size=st.one_of(st.none(), st.integers(min_value=1, max_value=10)),
    multiplier=st.one_of(st.none(), st.integers(min_value=1, max_value=5)),
)
def test_every_index_once_and_budget_respected(
    lengths: list[int],
    max_tokens: int,
    shuffle: bool,
    seed: int,
    max_batch_size: int | None,
    multiplier: int | None,
) -> None:
    sampler = TokenBudgetBatchSampler(
        lengths,
        max_tokens,
        shuffle=shuffle,
        seed=seed,
        max_batch_size=max_batch_size,
        bucket_size_multiplier=multiplier,
    )
    costs = [max(1, n) for n in lengths]
    for _ in range(2):
        batches = list(sampler)
        assert len(batches) == len(sampler)
        check_epoch(batches, costs, max_tokens)
        if max_batch_size is not None:
            assert all(len(batch) <= max_batch_size for batch in batches)


def test_over_budget_examples_are_singletons() -> None:
    lengths = [5, 500, 5, 5, 900, 5]
    batches = list(TokenBudgetBatchSampler(lengths, 100, shuffle=False))
    assert [4] in batches and [1] in batches
    check_epoch(batches, lengths, 100)


def test_eval_order_is_sorted_longest_first_and_stable() -> None:
    lengths = [3, 7, 3, 9, 7, 1]
    batches = list(TokenBudgetBatchSampler(lengths, 14, shuffle=False))
    assert [i for batch in batches for i in batch] == [3, 1, 4, 0, 2, 5]
    assert batches == list(TokenBudgetBatchSampler(lengths, 14, shuffle=False))


@pytest.mark.parametrize("multiplier", [None, 100])
def test_batches_group_similar_lengths(multiplier: int | None) -> None:
    lengths = random_lengths(5000)
    sampler = TokenBudgetBatchSampler(lengths, 1000, shuffle=True, bucket_size_multiplier=multiplier)
    padded = sum(cost(batch, lengths) for batch in sampler)
    assert padded < 1.1 * sum(lengths)


def test_default_shuffle_keeps_the_batch_count_but_changes_contents() -> None:
    lengths = random_lengths(3000)
    sampler = TokenBudgetBatchSampler(lengths, 200, shuffle=True)
    epochs = [sampler.all_batches(epoch) for epoch in range(6)]
    assert len({len(batches) for batches in epochs}) == 1
    contents = [{tuple(sorted(batch)) for batch in batches} for batches in epochs]
    assert len(contents[0] & contents[1]) < 0.5 * len(contents[0])


def test_deterministic_per_seed_and_epoch() -> None:
    lengths = random_lengths(1000)
    a = TokenBudgetBatchSampler(lengths, 300, shuffle=True, seed=3)
    b = TokenBudgetBatchSampler(lengths, 300, shuffle=True, seed=3)
    a.set_epoch(5)
    b.set_epoch(5)
    batches = list(a)
    assert batches == list(b)
    for seed, epoch in [(4, 5), (4, 4), (2, 6)]:
        other = TokenBudgetBatchSampler(lengths, 300, shuffle=True, seed=seed)
        other.set_epoch(epoch)
        assert list(other) != batches


def test_epochs_differ_and_advance_without_set_epoch() -> None:
    lengths = random_lengths(1000)
    sampler = TokenBudgetBatchSampler(lengths, 300, shuffle=True, seed=1)
    epoch0, epoch1 = list(sampler), list(sampler)
    assert epoch0 != epoch1
    assert sampler.epoch == 1
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    assert list(sampler) == epoch1


def test_len_matches_the_current_epoch() -> None:
    lengths = random_lengths(3000)
    sampler = TokenBudgetBatchSampler(lengths, 200, shuffle=True, bucket_size_multiplier=1)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        expected = len(sampler)
        batches = list(sampler)
        assert len(batches) == expected == len(sampler)


def test_lightning_reaches_set_epoch_through_the_dataloader() -> None:
    lengths = random_lengths(200)
    sampler = TokenBudgetBatchSampler(lengths, 200, shuffle=True)
    loader = DataLoader(list(range(200)), batch_sampler=sampler, collate_fn=lambda items: items)
    _set_sampler_epoch(loader, 7)  # what Lightning's fit loop calls at the start of every epoch
    assert sampler.epoch == 7
    reference = TokenBudgetBatchSampler(lengths, 200, shuffle=True)
    reference.set_epoch(7)
    assert list(loader) == list(reference)
    assert len(loader) == len(reference)


@pytest.mark.parametrize("num_replicas", [2, 3, 4])
@pytest.mark.parametrize("shuffle", [True, False])
def test_distributed_dealing(num_replicas: int, shuffle: bool) -> None:
    lengths = random_lengths(701, seed=num_replicas)
    per_rank = [
        TokenBudgetBatchSampler(lengths, 250, shuffle=shuffle, seed=2, num_replicas=num_replicas, rank=rank)
        for rank in range(num_replicas)
    ]
    for sampler in per_rank:
        sampler.set_epoch(3)
    batches = [list(sampler) for sampler in per_rank]
    counts = {len(rank_batches) for rank_batches in batches}
    assert len(counts) == 1 and counts == {len(per_rank[0])}
    seen = [i for rank_batches in batches for batch in rank_batches for i in batch]
    assert set(seen) == set(range(len(lengths)))
    single = TokenBudgetBatchSampler(lengths, 250, shuffle=shuffle, seed=2)
    single.set_epoch(3)
    expected_batches = list(single)
    # Padding repeats at most num_replicas - 1 batches.
    assert len(expected_batches) <= sum(len(b) for b in batches) < len(expected_batches) + num_replicas
    dealt = [batch for step in zip(*batches, strict=True) for batch in step]
    assert dealt[: len(expected_batches)] == expected_batches


def test_distributed_with_fewer_batches_than_replicas() -> None:
    batches = [
        list(TokenBudgetBatchSampler([1, 2], 100, shuffle=False, num_replicas=4, rank=r)) for r in range(4)
    ]
    assert batches == [[[1, 0]]] * 4


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        TokenBudgetBatchSampler([1], 0, shuffle=True)
    with pytest.raises(ValueError, match="rank"):
        TokenBudgetBatchSampler([1], 10, shuffle=True, num_replicas=2, rank=2)


def test_works_as_a_batch_sampler() -> None:
    data = torch.arange(50)
    lengths = random_lengths(50)
    loader = DataLoader(data, batch_sampler=TokenBudgetBatchSampler(lengths, 100, shuffle=True))
    seen = torch.cat(list(loader))
    assert sorted(seen.tolist()) == list(range(50))
