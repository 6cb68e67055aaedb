"""Scoring decoded rows: sacreBLEU, ROUGE and output-health counts, returned as a typed report.

Used by validation and test (printed, logged and kept by :class:`~lightning_diffusion.callbacks.ValidationHistory`
and :class:`~lightning_diffusion.callbacks.SampleTextLogger`) and by the benchmarks, so every score a user sees is
computed and worded the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from lightning_diffusion.metrics import corpus_bleu, rouge

REPLACEMENT_CHARACTER = "\ufffd"
_REPEAT = re.compile(r"(?<!\S)(\S+)(?:\s+\1)+(?!\S)")


def has_repeat(text: str) -> bool:
    """Whether a word (whitespace-separated) appears twice or more back to back (``"auf auf"``)."""
    return _REPEAT.search(text) is not None


def has_repeated_bigram(text: str) -> bool:
    """Whether two consecutive words (whitespace-separated, as written) occur twice or more anywhere in the text:
    a repeated phrase, back to back or not (``"auf einer Baustelle auf einer Baustelle"``), which :func:`has_repeat`
    does not see. A word repeated three times back to back counts too. References have some (Multi30k test: 3%)."""
    tokens = text.split()
    pairs = list(zip(tokens[:-1], tokens[1:], strict=True))
    return len(pairs) != len(set(pairs))


_WORDS = Tokenizer13a()


def words(text: str) -> list[str]:
    """The words of ``text`` as BLEU sees them: sacreBLEU's ``13a`` tokenization (punctuation split off), case kept."""
    return _WORDS(text).split()


def known_words(texts: Iterable[str]) -> frozenset[str]:
    """Every word (:func:`words`) of ``texts``: the vocabulary :func:`has_unseen_word` checks against, built from a
    training set's references."""
    return frozenset(word for text in texts for word in words(text))


def has_unseen_word(text: str, known: frozenset[str]) -> bool:
    """Whether ``text`` holds a word that is not in ``known``: subword pieces a non-autoregressive model picked
    independently and detokenization glued into a non-word (``"aufim"``, ``"Baustelleeder"``). New compounds, names
    and numbers count too: 25.7% of the Multi30k test_2016_flickr references hold a word its training references
    never do, so read a system's count against its test references'."""
    return any(word not in known for word in words(text))


@dataclass
class EvaluationReport:
    """Scores of one decoded split, with the settings that produced them.

    Attributes:
        stage: ``val``, ``test`` or a benchmark's name.
        step: training step of the weights.
        bleu: corpus sacreBLEU on detokenized text; signature: its sacreBLEU signature.
        rouge1, rouge2, rougeL: ROUGE F1 x 100 (rouge-score, stemmed).
        sentences: hypotheses scored.
        empty: hypotheses that are empty (or whitespace) while their source is not.
        replacement_chars: hypotheses containing U+FFFD (a broken character; decoding drops orphan byte tokens, so
            these come from the text itself or from a tokenizer whose decode writes them).
        repeats: hypotheses with a word repeated back to back.
        settings: the decoding settings in words.
        samples: the first rows ``{"index", "source", "hypothesis", "reference"}``.
        repeated_bigrams: hypotheses in which two consecutive words occur twice (:func:`has_repeated_bigram`).
        unseen_words: hypotheses with a word not in the training references (:func:`has_unseen_word`); None when
            no vocabulary was given.
    """

    stage: str
    step: int
    bleu: float
    signature: str
    rouge1: float
    rouge2: float
    rougeL: float  # noqa: N815 (the metric's name)
    sentences: int
    empty: int
    replacement_chars: int
    repeats: int
    settings: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    repeated_bigrams: int = 0
    unseen_words: int | None = None

    def as_dict(self, samples: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not samples:
            data.pop("samples")
        return data

    def health(self) -> str:
        """``"empty 0, U+FFFD 2, repeated words 14, repeated bigrams 30 of 300 hypotheses"`` (with ``unseen words N``
        before ``of`` when a vocabulary was given)."""
        unseen = "" if self.unseen_words is None else f", unseen words {self.unseen_words}"
        return (
            f"empty {self.empty}, U+FFFD {self.replacement_chars}, repeated words {self.repeats}, "
            f"repeated bigrams {self.repeated_bigrams}{unseen} of {self.sentences} hypotheses"
        )

    def format(self, when: str) -> str:
        """The lines printed after an evaluation: scores, health counts, settings, signature and samples."""
        lines = [
            f"[{self.stage} @ {when}] BLEU {self.bleu:.2f} | ROUGE-1/2/L {self.rouge1:.1f}/{self.rouge2:.1f}/"
            f"{self.rougeL:.1f} (F1 x100) | {self.sentences} sentences",
            f"  outputs: {self.health()}",
            f"  decoding: {self.settings}",
            f"  sacreBLEU signature: {self.signature}",
        ]
        for row in self.samples:
            lines += [f"  src: {row['source']}", f"  hyp: {row['hypothesis']}", f"  ref: {row.get('reference', '')}", ""]
        return "\n".join(lines).rstrip()


def evaluate(
    rows: Sequence[dict[str, Any]],
    settings: str,
    stage: str = "test",
    step: int = 0,
    samples: int = 3,
    vocabulary: frozenset[str] | None = None,
) -> EvaluationReport:
    """Score rows ``{"source", "hypothesis", "reference"}`` (each with one reference) into a report; with
    ``vocabulary`` (:func:`known_words` of the training references) also count hypotheses with an unseen word."""
    missing = [i for i, row in enumerate(rows) if "reference" not in row]
    if missing:
        raise ValueError(f"cannot score: {len(missing)} rows have no reference (first at row {missing[0]})")
    hyps = [row["hypothesis"] for row in rows]
    refs = [row["reference"] for row in rows]
    bleu = corpus_bleu(hyps, refs)
    scores = rouge(hyps, refs, keys=("rouge1", "rouge2", "rougeL"))
    return EvaluationReport(
        stage=stage,
        step=step,
        bleu=float(bleu.score),
        signature=bleu.signature,
        rouge1=float(scores["rouge1"]),
        rouge2=float(scores["rouge2"]),
        rougeL=float(scores["rougeL"]),
        sentences=len(rows),
        empty=sum(1 for row in rows if not row["hypothesis"].strip() and row["source"].strip()),
        replacement_chars=sum(1 for h in hyps if REPLACEMENT_CHARACTER in h),
        repeats=sum(1 for h in hyps if has_repeat(h)),
        settings=settings,
        samples=[dict(row) for row in rows[:samples]],
        repeated_bigrams=sum(1 for h in hyps if has_repeated_bigram(h)),
        unseen_words=None if vocabulary is None else sum(1 for h in hyps if has_unseen_word(h, vocabulary)),
    )


__all__ = [
    "EvaluationReport",
    "evaluate",
    "has_repeat",
    "has_repeated_bigram",
    "has_unseen_word",
    "known_words",
    "words",
]
