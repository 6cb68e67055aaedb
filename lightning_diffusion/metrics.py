"""Corpus metrics on detokenized text: sacreBLEU (with its signature) and ROUGE (rouge-score, stemmed F1).

torchmetrics' ``ROUGEScore`` asks NLTK to download punkt for ``rougeLsum``, which fails offline, so ROUGE
calls rouge-score directly (it splits summary sentences on newlines itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@dataclass(frozen=True)
class BleuResult:
    """Corpus BLEU in ``[0, 100]`` and sacreBLEU's signature string (how to reproduce the score)."""

    score: float
    signature: str
    summary: str


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> BleuResult:
    """sacreBLEU over detokenized hypotheses against raw references (one reference each)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu = BLEU(tokenize=tokenize)
    result = bleu.corpus_score(list(hypotheses), [list(references)])
    return BleuResult(score=float(result.score), signature=str(bleu.get_signature()), summary=str(result))


def rouge(hypotheses: Sequence[str], references: Sequence[str], keys: Sequence[str] = ROUGE_KEYS) -> dict[str, float]:
    """Mean ROUGE F1 (in ``[0, 100]``) per key, Porter stemming on (rouge-score)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for hyp, ref in zip(hypotheses, references, strict=True):
        scores = scorer.score(ref, hyp)
        for key in keys:
            totals[key] += scores[key].fmeasure
    n = max(len(hypotheses), 1)
    return {key: 100.0 * value / n for key, value in totals.items()}
