"""Minimum Bayes risk selection among candidates of the same source (never against the reference)."""

from __future__ import annotations

from collections.abc import Sequence

from sacrebleu.metrics import BLEU

_SENTENCE_BLEU = BLEU(effective_order=True)


def mbr_select(candidates: Sequence[str]) -> int:
    """Index of the candidate with the highest summed sentence-BLEU against the other candidates.

    Ties go to the earliest candidate; with one candidate, 0.
    """
    if not candidates:
        raise ValueError("mbr_select needs at least one candidate")
    if len(candidates) == 1:
        return 0
    best, best_score = 0, float("-inf")
    for i, hyp in enumerate(candidates):
        score = sum(
            _SENTENCE_BLEU.sentence_score(hyp, [ref]).score for j, ref in enumerate(candidates) if j != i
        )
        if score > best_score:
            best, best_score = i, score
    return best
