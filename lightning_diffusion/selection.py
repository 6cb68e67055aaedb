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
    """Rule that picks one of the ``N`` candidate strings of a source (``N >= 1``).

    A rule that ranks by the model's own scores of its candidates sets :attr:`needs_scores` and overrides
    :meth:`choose`; the others implement :meth:`select` on the strings alone."""

    #: True when the rule needs the sampler's score of every candidate (see :meth:`choose`).
    needs_scores: bool = False

    @abstractmethod
    def select(self, candidates: Sequence[str]) -> int:
        """Index in ``0..N-1`` of the chosen candidate."""

    def choose(self, candidates: Sequence[str], scores: Sequence[float] | None = None) -> int:
        """Index of the chosen candidate given the strings and, where the sampler gives them, the model's score
        of each (higher is better; ``len(scores) == N``). Default: :meth:`select` on the strings."""
        return self.select(candidates)

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


class ModelScoreSelection(CandidateSelection):
    """The candidate the model scores highest: the mean log-probability of its tokens, each taken from the
    prediction that decided it (mask-predict's length-beam rule, Ghazvininejad et al. 2019, Sec. 3.2:
    ``argmax_l (1 / N_l) sum_i log p(y_i^l)``). Needs a sampler that scores its tokens
    (``DiscreteSampler.scores_tokens``: mask-predict / re-masking and the confidence-threshold sampler). Ties go
    to the earliest candidate (the most likely length). With a length predictor each candidate's positions are its
    own tokens and EOS; on a padded canvas (no length predictor) the mean runs over the whole canvas, the padding
    after the end token included. :meth:`select` (strings only) raises: the rule needs :meth:`choose`."""

    needs_scores = True

    def select(self, candidates: Sequence[str]) -> int:
        raise ValueError(
            "ModelScoreSelection ranks candidates by the model's scores, not by their strings: call choose(candidates, "
            "scores) with a sampler that scores its tokens"
        )

    def choose(self, candidates: Sequence[str], scores: Sequence[float] | None = None) -> int:
        if not candidates:
            raise ValueError("ModelScoreSelection needs at least one candidate")
        if scores is None or len(scores) != len(candidates):
            got = "no scores" if scores is None else f"{len(scores)} scores"
            raise ValueError(f"ModelScoreSelection needs one model score per candidate: {len(candidates)} candidates, {got}")
        return max(range(len(scores)), key=lambda i: scores[i])  # the first of equal maxima

    def describe(self) -> str:
        return "the model's mean token log-probability"


__all__ = ["CandidateSelection", "FirstCandidate", "MBRSelection", "ModelScoreSelection", "mbr_select"]
