"""Corpus metrics (sacreBLEU, ROUGE) and MBR selection."""

from __future__ import annotations

import itertools

import pytest
from sacrebleu.metrics import BLEU

from lightning_diffusion.metrics import ROUGE_KEYS, BleuResult, corpus_bleu, rouge
from lightning_diffusion.selection import mbr_select

HYPS = ["the cat sat on the mat .", "a quick brown fox jumps over the lazy dog", "hello , world !"]


# ---------------------------------------------------------------- BLEU


def test_bleu_identical_is_100_and_signature():
    result = corpus_bleu(HYPS, HYPS)
    assert isinstance(result, BleuResult)
    assert result.score == pytest.approx(100.0)
    assert "nrefs:1" in result.signature
    assert "tok:13a" in result.signature
    assert "BLEU" in result.summary


def test_bleu_tokenizer_in_signature():
    result = corpus_bleu(HYPS, HYPS, tokenize="intl")
    assert "tok:intl" in result.signature


def test_bleu_disjoint_is_0_and_partial_in_between():
    assert corpus_bleu(["x y z w"], ["a b c d"]).score == pytest.approx(0.0)
    partial = corpus_bleu(["the cat sat on the mat today"], ["the cat sat on the mat"]).score
    assert 0.0 < partial < 100.0


def test_bleu_matches_sacrebleu_directly():
    refs = ["the cat is on the mat .", "a fast brown fox jumped over a lazy dog", "hello world"]
    expected = BLEU(tokenize="13a").corpus_score(HYPS, [refs]).score
    assert corpus_bleu(HYPS, refs).score == pytest.approx(expected)


def test_bleu_is_corpus_level_not_sentence_average():
    """Corpus BLEU pools n-gram counts: it differs from the mean of sentence BLEUs."""
    hyps = ["the cat sat on the mat", "completely wrong output here"]
    refs = ["the cat sat on the mat", "the dog ran across the park quickly"]
    expected = BLEU().corpus_score(hyps, [refs]).score
    assert corpus_bleu(hyps, refs).score == pytest.approx(expected)


def test_bleu_length_mismatch_raises():
    with pytest.raises(ValueError):
        corpus_bleu(HYPS, HYPS[:2])


# ---------------------------------------------------------------- ROUGE


def test_rouge_identical_is_100():
    scores = rouge(HYPS, HYPS)
    assert set(scores) == set(ROUGE_KEYS)
    for key in ROUGE_KEYS:
        assert scores[key] == pytest.approx(100.0)


def test_rouge_disjoint_is_0_and_keys_subset():
    scores = rouge(["alpha beta"], ["gamma delta"], keys=("rouge1", "rougeL"))
    assert set(scores) == {"rouge1", "rougeL"}
    assert scores["rouge1"] == 0.0 and scores["rougeL"] == 0.0


def test_rouge1_hand_computed_and_averaged():
    # hyp "the cat" vs ref "the cat sat down": P = 2/2, R = 2/4, F1 = 2/3; second pair identical -> 1
    scores = rouge(["the cat", "dog"], ["the cat sat down", "dog"], keys=("rouge1",))
    assert scores["rouge1"] == pytest.approx(100.0 * (2 / 3 + 1.0) / 2)


def test_rouge_uses_stemming():
    assert rouge(["cats running"], ["cat run"], keys=("rouge1",))["rouge1"] == pytest.approx(100.0)


def test_rouge_length_mismatch_raises():
    with pytest.raises(ValueError):
        rouge(HYPS, HYPS[:1])


# ---------------------------------------------------------------- MBR


def test_mbr_picks_consensus():
    candidates = [
        "the cat sat on the mat today",
        "the cat sat on the mat",
        "a cat sat on a mat",
        "the dog ran in the park",
    ]
    assert mbr_select(candidates) == 1


def test_mbr_consensus_any_position():
    consensus = "the cat sat on the mat"
    others = ["the cat sat on the mat today", "a cat sat on a mat", "the dog ran in the park"]
    for perm in itertools.permutations(others):
        for pos in range(4):
            cands = list(perm)
            cands.insert(pos, consensus)
            assert mbr_select(cands) == pos


def test_mbr_outlier_never_chosen_and_ties_go_first():
    assert mbr_select(["zz yy xx ww", "the same words here", "the same words here"]) == 1
    assert mbr_select(["same text here", "same text here"]) == 0


def test_mbr_single_and_empty():
    assert mbr_select(["only one"]) == 0
    with pytest.raises(ValueError):
        mbr_select([])


def test_mbr_matches_bruteforce_sentence_bleu():
    bleu = BLEU(effective_order=True)
    candidates = ["a b c d e", "a b c d", "a b x d e f", "q r s", "a b c d e f g"]
    sums = [
        sum(bleu.sentence_score(h, [r]).score for j, r in enumerate(candidates) if j != i)
        for i, h in enumerate(candidates)
    ]
    assert mbr_select(candidates) == max(range(len(candidates)), key=lambda i: (sums[i], -i))
