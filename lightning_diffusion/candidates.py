"""Candidates per source for non-autoregressive decoding: the length beam x noise beam layout, and the choice of one
hypothesis per source. Shared by the continuous (:class:`~lightning_diffusion.DiffusionLM`) and discrete
(:class:`~lightning_diffusion.DiscreteDiffusionLM`) models."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lightning_diffusion.length import LengthPredictor
from lightning_diffusion.types import Conditioning

if TYPE_CHECKING:
    from lightning_diffusion.decoding import Decoding
    from lightning_diffusion.seq2seq import Seq2SeqModule


@dataclass
class CandidateLayout:
    """How ``B`` sources become ``B * per_source`` candidate rows (a source's candidates adjacent).

    Attributes:
        per_source: candidates per source (``length_beam x noise_beam``, or ``noise_beam`` on a canvas).
        length: the decoding canvas ``L`` of the batch.
        tgt_mask: ``[B * per_source, L]`` bool, positions each candidate has (its predicted length), or None when
            every candidate is the whole canvas.
    """

    per_source: int
    length: int
    tgt_mask: Tensor | None


def canvas_length(src_mask: Tensor, length_ratio: float, length_offset: int, max_length: int) -> int:
    """Decoding canvas of a batch without a length predictor: ``min(max_length, ceil(ratio * longest source) +
    offset)`` positions (at least 1)."""
    longest = int(src_mask.sum(-1).max())
    return max(1, min(max_length, math.ceil(length_ratio * longest) + length_offset))


def build_length_predictor(
    factory: Callable[[int], LengthPredictor] | None, hidden_dim: int, loss_terms: Iterable[object]
) -> LengthPredictor | None:
    """The length predictor from its factory (called with the denoiser's ``hidden_dim``), checked against the loss
    terms: a term that needs one (``needs_length_predictor``) without a predictor, or a predictor no term trains, is
    an error."""
    predictor = factory(hidden_dim) if factory is not None else None
    needs_length = [getattr(term, "name", type(term).__name__) for term in loss_terms if getattr(term, "needs_length_predictor", False)]
    if needs_length and predictor is None:
        raise ValueError(f"loss terms {needs_length} need a length_predictor; configure one or drop them")
    if predictor is not None and not needs_length:
        raise ValueError("a length_predictor is configured but no loss term trains it: add LengthNLL to loss_terms")
    return predictor


def candidate_layout(
    length_predictor: LengthPredictor | None,
    cond: Conditioning,
    src_mask: Tensor,
    decoding: Decoding,
    max_length: int,
    canvas_length: int,
) -> CandidateLayout:
    """With a length predictor: the ``length_beam`` most likely lengths per source, each decoded ``noise_beam``
    times, on a canvas as long as the longest; without one: ``noise_beam`` samples of the ``canvas_length`` canvas."""
    if length_predictor is None:
        return CandidateLayout(per_source=decoding.noise_beam, length=canvas_length, tgt_mask=None)
    top = length_predictor.top_lengths(length_predictor(cond), src_mask.sum(-1), decoding.length_beam, max_length)
    lengths = top.repeat_interleave(decoding.noise_beam, dim=1).reshape(-1)  # [B * per_source]
    length = int(lengths.max())
    tgt_mask = torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]
    return CandidateLayout(per_source=top.shape[1] * decoding.noise_beam, length=length, tgt_mask=tgt_mask)


def length_groups(lengths: Tensor, overhead: int = 64) -> list[Tensor]:
    """Split candidate rows into groups of similar length, each decoded on its own canvas (as long as its longest
    row) instead of one canvas as long as the batch's longest: the padding a short candidate would carry through
    every denoiser call is not computed.

    The split minimises ``sum over groups (rows x longest + overhead)``, the positions the network runs over plus a
    fixed cost per extra call in position-equivalents (``overhead``: Python, kernel launches and small ops of one
    denoiser call), exactly, by dynamic programming over the distinct lengths (at most ``max_length`` of them).

    Args:
        lengths: ``[N]`` long, each row's length (>= 1).
        overhead: cost of one more group in positions; 0 = one group per distinct length, a large value = one group.

    Returns:
        Row indices ``[N_g]`` (long) per group, shortest group first, rows by increasing length inside a group;
        together a permutation of ``0..N-1``.
    """
    if lengths.dim() != 1 or lengths.numel() == 0:
        raise ValueError(f"lengths must be a non-empty [N] tensor, got shape {tuple(lengths.shape)}")
    if overhead < 0:
        raise ValueError(f"overhead must be >= 0, got {overhead}")
    order = torch.argsort(lengths, stable=True)
    values, counts = torch.unique_consecutive(lengths[order], return_counts=True)
    values_, ends = values.tolist(), counts.cumsum(0).tolist()  # rows with length <= values_[i]: ends[i]
    best = [0.0] + [math.inf] * len(values_)  # best[i]: cost of the first i distinct lengths
    cut = [0] * (len(values_) + 1)
    for i in range(1, len(values_) + 1):
        for j in range(i):
            cost = best[j] + (ends[i - 1] - (ends[j - 1] if j else 0)) * values_[i - 1] + overhead
            if cost < best[i]:
                best[i], cut[i] = cost, j
    bounds, i = [], len(values_)
    while i > 0:
        bounds.append((ends[cut[i] - 1] if cut[i] else 0, ends[i - 1]))
        i = cut[i]
    return [order[start:end] for start, end in reversed(bounds)]


GroupSampler = Callable[[Tensor, int, "Callable[[int, int], None] | None"], "tuple[Tensor, int, Tensor | None]"]
"""Decodes one length group: ``(rows [N_g] long, length L_g, on_step)`` -> ids ``[N_g, L_g]``, network calls, and the
rows' sequence scores ``[N_g]`` (None when the sampler gives none)."""


def sample_in_groups(
    tgt_mask: Tensor,
    groups: list[Tensor],
    sample_group: GroupSampler,
    on_step: Callable[[int, int], None] | None = None,
    with_scores: bool = False,
) -> tuple[Tensor, int, Tensor | None]:
    """Decode candidate rows with predicted lengths (``tgt_mask`` ``[N, L]``) one group of rows at a time, each
    group on a canvas as long as its longest row (``groups`` from :func:`length_groups`), and put the results back on
    their rows.

    Args:
        sample_group: decodes one group (:data:`GroupSampler`).
        on_step: progress over all groups, ``(done, total)`` with ``total = groups x steps``.
        with_scores: collect the groups' sequence scores (None for the batch if any group gives none: never a
            made-up 0).

    Returns:
        ids ``[N, L]`` (0 past each group's canvas), the most network calls any group made, and the scores ``[N]``
        or None.
    """
    lengths = tgt_mask.sum(-1)
    if len(groups) == 1:  # one canvas: the rows in their own order
        groups = [torch.arange(tgt_mask.shape[0], device=tgt_mask.device)]
    token_ids = torch.zeros(tgt_mask.shape, dtype=torch.long, device=tgt_mask.device)
    scores: Tensor | None = torch.zeros(tgt_mask.shape[0], device=tgt_mask.device) if with_scores else None
    nfe = 0
    for g, rows in enumerate(groups):
        length = int(lengths[rows].max())
        step = None if on_step is None else (lambda done, total, g=g: on_step(g * total + done, len(groups) * total))
        ids, calls, group_scores = sample_group(rows, length, step)
        token_ids[rows, :length] = ids
        if scores is not None:
            if group_scores is None:
                scores = None
            else:
                scores[rows] = group_scores
        nfe = max(nfe, calls)
    return token_ids, nfe, scores


def choose_candidates(
    module: Seq2SeqModule, token_ids: Tensor, layout: CandidateLayout, decoding: Decoding, scores: Tensor | None = None
) -> list[str]:
    """Decoded ids ``[B * per_source, L]`` -> one hypothesis per source: positions past a candidate's length become
    the end token (so the text is cut there), the ids are detokenized (collapsing repeats if the decoding says so)
    and the decoding's selection (MBR by default) picks among each source's candidates. ``scores``
    ``[B * per_source]``: the sampler's score of each candidate (higher is better), for selections that rank by it
    (the models' ``check_decoding`` rejects such a selection with a sampler that gives none)."""
    if layout.tgt_mask is not None:
        token_ids = token_ids.masked_fill(~layout.tgt_mask, module.special_ids.eos)
    texts = module.decode_ids(token_ids, collapse=decoding.collapse_repeats)
    n = layout.per_source
    if n == 1:
        return texts
    values = scores.tolist() if scores is not None else None
    groups = [texts[i : i + n] for i in range(0, len(texts), n)]
    return [
        group[decoding.selection.choose(group, values[k * n : (k + 1) * n] if values is not None else None)]
        for k, group in enumerate(groups)
    ]


__all__ = [
    "CandidateLayout",
    "GroupSampler",
    "build_length_predictor",
    "canvas_length",
    "candidate_layout",
    "choose_candidates",
    "length_groups",
    "sample_in_groups",
]
