"""Scoring decoded rows: the output-health counts (empty, U+FFFD, repeated words, repeated bigrams) and the report."""

from __future__ import annotations

import pytest

from lightning_diffusion.evaluation import evaluate, has_repeat, has_repeated_bigram


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
