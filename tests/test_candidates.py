"""Candidate layout helpers: grouping candidate rows by length (each group decoded on its own canvas)."""

from __future__ import annotations

import itertools

import pytest
import torch

from lightning_diffusion.candidates import length_groups


def padded_cost(lengths: torch.Tensor, groups: list[torch.Tensor], overhead: int) -> int:
    return sum(len(rows) * int(lengths[rows].max()) + overhead for rows in groups)


def brute_force(lengths: list[int], overhead: int) -> int:
    """Cheapest split of the sorted distinct lengths into contiguous runs, by enumerating every set of cuts."""
    values = sorted(set(lengths))
    count = {v: lengths.count(v) for v in values}
    best = None
    for cuts in itertools.product([False, True], repeat=len(values) - 1):
        cost, rows = 0, 0
        for i, v in enumerate(values):
            rows += count[v]
            if i == len(values) - 1 or cuts[i]:
                cost += rows * v + overhead
                rows = 0
        best = cost if best is None else min(best, cost)
    assert best is not None
    return best


def test_groups_are_a_permutation_sorted_by_length() -> None:
    lengths = torch.tensor([7, 3, 12, 3, 30, 8, 7, 29])
    groups = length_groups(lengths, overhead=4)
    rows = torch.cat(groups)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    assert lengths[rows].tolist() == sorted(lengths.tolist())  # shortest group first, sorted inside


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("overhead", [0, 5, 40, 400])
def test_the_split_is_the_cheapest_contiguous_one(seed: int, overhead: int) -> None:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 30, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g)
    groups = length_groups(lengths, overhead)
    assert padded_cost(lengths, groups, overhead) == brute_force(lengths.tolist(), overhead)


def test_overhead_decides_between_one_canvas_and_one_group_per_length() -> None:
    lengths = torch.tensor([5, 5, 9, 20, 20, 20])
    assert len(length_groups(lengths, overhead=0)) == 3  # one per distinct length: no padding at all
    assert len(length_groups(lengths, overhead=10_000)) == 1  # the old single canvas
    # hand-computed: one canvas 6 x 20 + 64 = 184; {5, 5, 9} + {20 x 3}: 3 x 9 + 64 + 3 x 20 + 64 = 215
    assert len(length_groups(lengths, overhead=64)) == 1
    # 64 rows of 10 and 64 rows of 30: 128 x 30 + 64 = 3,904 against 640 + 64 + 1,920 + 64 = 2,688
    two = length_groups(torch.tensor([10] * 64 + [30] * 64), overhead=64)
    assert [len(rows) for rows in two] == [64, 64]


def test_bad_arguments_are_errors() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        length_groups(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="overhead"):
        length_groups(torch.tensor([3]), overhead=-1)
