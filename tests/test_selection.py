"""Candidate selection rules: MBR by consensus, the first candidate, and the model's own score."""

from __future__ import annotations

import pytest

from lightning_diffusion.selection import FirstCandidate, MBRSelection, ModelScoreSelection

CANDIDATES = ["ein Hund läuft", "ein Hund läuft schnell", "zwei Katzen"]


def test_string_rules_ignore_scores() -> None:
    assert MBRSelection().choose(CANDIDATES, [0.0, -9.0, 5.0]) == MBRSelection().select(CANDIDATES) == 0
    assert FirstCandidate().choose(CANDIDATES, None) == 0


def test_model_score_takes_the_highest_mean_log_probability() -> None:
    rule = ModelScoreSelection()
    assert rule.needs_scores and not MBRSelection().needs_scores
    assert rule.choose(CANDIDATES, [-1.5, -0.25, -0.75]) == 1
    assert rule.choose(CANDIDATES, [-2.0, -2.0, -3.0]) == 0  # ties: the earliest (the most likely length)
    assert rule.choose(CANDIDATES, [float("-inf"), float("-inf"), -50.0]) == 2
    assert "log-probability" in rule.describe()


def test_model_score_without_scores_is_an_error() -> None:
    rule = ModelScoreSelection()
    with pytest.raises(ValueError, match="no scores"):
        rule.choose(CANDIDATES, None)
    with pytest.raises(ValueError, match="3 candidates, 2 scores"):
        rule.choose(CANDIDATES, [0.0, 1.0])
    with pytest.raises(ValueError, match="not by their strings"):
        rule.select(CANDIDATES)
