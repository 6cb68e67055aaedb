"""Candidate selection: pick one hypothesis among the candidates decoded for the same source.

Selection never sees the reference: it is part of decoding, applied identically in validation, test, predict
and ``generate``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from sacrebleu.metrics import BLEU

_SENTENCE_BLEU = BLEU(effective_order=True)


def mbr_select(candidates: Sequence[str]) -> int:
    """Index of the candidate with the highest summed sentence-BLEU against the other candidates (minimum
    Bayes risk with BLEU as the gain). Ties go to the earliest candidate; with one candidate, 0."""
    if not candidates:
        raise ValueError("mbr_select needs at least one candidate")
    if len(candidates) == 1:
        return 0
    best, best_score = 0, float("-inf")
    for i, hyp in enumerate(candidates):
        score = sum(_SENTENCE_BLEU.sentence_score(hyp, [ref]).score for j, ref in enumerate(candidates) if j != i)
        if score > best_score:
            best, best_score = i, score
    return best


class CandidateSelection(ABC):
    """Rule that picks one of the ``N`` candidate strings of a source (``N >= 1``)."""

    @abstractmethod
    def select(self, candidates: Sequence[str]) -> int:
        """Index in ``0..N-1`` of the chosen candidate."""

    def describe(self) -> str:
        """The rule in words, printed with the decoding settings."""
        return type(self).__name__

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(type(self))


class MBRSelection(CandidateSelection):
    """Minimum Bayes risk: the candidate with the highest summed sentence-BLEU against the others (consensus)."""

    def select(self, candidates: Sequence[str]) -> int:
        return mbr_select(candidates)

    def describe(self) -> str:
        return "MBR (sentence-BLEU consensus)"


class FirstCandidate(CandidateSelection):
    """The first candidate (the most likely length of the length beam, first noise sample): no consensus."""

    def select(self, candidates: Sequence[str]) -> int:
        if not candidates:
            raise ValueError("FirstCandidate needs at least one candidate")
        return 0

    def describe(self) -> str:
        return "first candidate"


__all__ = ["CandidateSelection", "FirstCandidate", "MBRSelection", "mbr_select"]
