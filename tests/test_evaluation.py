"""Scoring decoded rows: the output-health counts (empty, U+FFFD, repeated words, repeated bigrams, unseen words)
and the report."""

from __future__ import annotations

import pytest

from lightning_diffusion.evaluation import (
    evaluate,
    has_repeat,
    has_repeated_bigram,
    has_unseen_word,
    known_words,
    words,
)


def test_a_repeated_word_is_back_to_back_only() -> None:
    assert has_repeat("ein Hund auf auf der Wiese") and has_repeat("auf auf auf")
    assert not has_repeat("auf der Wiese auf der Straße") and not has_repeat("auffahren auf")


def test_a_repeated_bigram_is_a_phrase_seen_twice_anywhere() -> None:
    assert has_repeated_bigram("Ein Bauarbeiter fährt auf einer Baustelle auf einer Baustelle.")
    assert has_repeated_bigram("auf auf auf")  # (auf, auf) twice
    assert not has_repeated_bigram("auf auf")  # one bigram
    assert not has_repeated_bigram("in einem Haus und in der Küche")  # a word seen twice, no pair
    assert not has_repeated_bigram("") and not has_repeated_bigram("Hund")


def test_the_report_counts_each_health_problem_once_per_hypothesis() -> None:
    rows = [
        {"source": "a", "hypothesis": "ein Hund auf einer Wiese auf einer Wiese", "reference": "ein Hund auf einer Wiese"},
        {"source": "b", "hypothesis": "zwei zwei Katzen", "reference": "zwei Katzen"},
        {"source": "c", "hypothesis": "", "reference": "ein Vogel"},
        {"source": "d", "hypothesis": "ein \ufffd Fisch", "reference": "ein Fisch"},
    ]
    report = evaluate(rows, settings="test settings", samples=1)
    assert (report.sentences, report.empty, report.replacement_chars) == (4, 1, 1)
    assert report.repeats == 1 and report.repeated_bigrams == 1
    assert report.health() == "empty 1, U+FFFD 1, repeated words 1, repeated bigrams 1 of 4 hypotheses"
    assert len(report.samples) == 1 and report.as_dict(samples=False)["repeated_bigrams"] == 1
    with pytest.raises(ValueError, match="1 rows have no reference"):
        evaluate([{"source": "a", "hypothesis": "b"}], settings="")


def test_words_are_bleus_13a_tokens_with_case_kept() -> None:
    assert words('Ein Mann, der "Baustelle." sagt') == ["Ein", "Mann", ",", "der", '"', "Baustelle", ".", '"', "sagt"]
    assert known_words(["Ein Hund.", "Im Park"]) == frozenset({"Ein", "Hund", ".", "Im", "Park"})


def test_an_unseen_word_is_one_the_training_references_never_hold() -> None:
    known = known_words(["Ein Mann auf einer Baustelle.", "Im Park."])
    assert not has_unseen_word("Ein Mann auf einer Baustelle.", known)
    assert not has_unseen_word("", known)
    assert has_unseen_word("Ein Mann aufim Park.", known)  # two pieces glued into a non-word
    assert has_unseen_word("Ein Mann im Park.", known)  # case kept: only "Im" was seen


def test_the_report_counts_unseen_words_only_with_a_vocabulary() -> None:
    rows = [
        {"source": "a", "hypothesis": "Ein Mann aufim Park.", "reference": "Ein Mann im Park."},
        {"source": "b", "hypothesis": "Ein Hund.", "reference": "Ein Hund."},
    ]
    report = evaluate(rows, settings="", vocabulary=known_words(["Ein Hund im Park.", "Ein Mann."]))
    assert report.unseen_words == 1
    assert report.health() == "empty 0, U+FFFD 0, repeated words 0, repeated bigrams 0, unseen words 1 of 2 hypotheses"
    assert evaluate(rows, settings="").unseen_words is None
