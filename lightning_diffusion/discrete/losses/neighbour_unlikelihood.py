"""Unlikelihood of the neighbours' tokens at the corrupted positions (against repeated words)."""

from __future__ import annotations

from torch import Tensor

from lightning_diffusion.discrete.losses.base import DiscreteLossInputs, DiscreteLossTerm
from lightning_diffusion.neighbour_unlikelihood import neighbour_unlikelihood


class NeighbourUnlikelihood(DiscreteLossTerm):
    """``sum_{l corrupted} sum_{j = l +- 1, x0_j != x0_l} -log(1 - p(x0_j | x_t)_l)`` over the batch's corrupted
    tokens (token-level mean, as :class:`ReweightedCrossEntropy` with ``token_mean``): at a masked position, lower
    the probability of the word its left or right neighbour holds in the target, so that two masked neighbours
    that both lean to one word do not both decode it (Welleck et al. 2020's token-level unlikelihood with the
    neighbours' words as negatives; :mod:`lightning_diffusion.neighbour_unlikelihood`). Reads the same
    ``[N, V']`` logits as the cross-entropy term (the head runs once)."""

    default_name = "unlikelihood"

    def forward(self, inputs: DiscreteLossInputs) -> Tensor:
        noisy = inputs.corrupted
        # In the head's columns (an output vocabulary's ids only); a word the head cannot emit is no neighbour.
        columns = inputs.x0_columns  # -100 where the head cannot emit the id (evaluation only): masked out below
        rows = neighbour_unlikelihood(inputs.corrupted_logits, columns.clamp_min(0), noisy, inputs.mask & (columns >= 0))  # [N]
        per_example = inputs.scatter(rows).sum(-1)
        return per_example / noisy.sum(-1).to(per_example.dtype).mean().clamp_min(1.0)


__all__ = ["NeighbourUnlikelihood"]
