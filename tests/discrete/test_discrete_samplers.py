"""Discrete samplers driven by an oracle denoiser recover the target; the unmasking rules hold; NFE is honest."""

from __future__ import annotations

import pytest
import torch

from lightning_diffusion.discrete import (
    AbsorbingCorruption,
    ConfidenceThresholdSampler,
    CosineMasking,
    DiscreteAncestralSampler,
    LinearMasking,
    MaskAndReplaceCorruption,
    MaskPredictSampler,
    TauLeapingSampler,
    TokenDenoiser,
    UniformCorruption,
)
from lightning_diffusion.discrete.samplers import decided_counts, mean_log_probability, token_choice
from lightning_diffusion.types import Conditioning

V = 11


class Oracle(TokenDenoiser):
    """Returns logits that put (almost) all mass on the true target; records the masks it was shown. Its "hidden
    states" are the logits themselves (width ``V``, identity head), so samplers that apply the head to some rows
    only see the same numbers."""

    def __init__(self, target: torch.Tensor, sure: float = 30.0) -> None:
        super().__init__(V, V)
        self.target = target
        self.sure = sure
        self.masked_seen: list[torch.Tensor] = []
        self.times_seen: list[torch.Tensor] = []

    def encode(self, src_ids, src_mask):
        return Conditioning(hidden=torch.zeros(src_ids.shape[0], 1, V), mask=src_mask)

    def output_logits(self, hidden):
        return hidden

    def hidden_states(self, x_t, t, cond, tgt_mask=None):
        self.masked_seen.append((x_t == self.mask_id).sum(-1))
        self.times_seen.append(t.clone())
        # Confidence differs by position so re-masking has a strict order: later positions are surer.
        ramp = torch.linspace(0.0, 1.0, x_t.shape[1])[None, :, None]
        return torch.nn.functional.one_hot(self.target, V).float() * (self.sure + ramp)


def run(sampler, corruption=None, lengths=(7, 4), steps_seen=False, schedule=None):
    target = torch.randint(0, V, (len(lengths), max(lengths)), generator=torch.Generator().manual_seed(0))
    mask = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
    oracle = Oracle(target)
    cond = oracle.encode(torch.zeros(len(lengths), 3, dtype=torch.long), torch.ones(len(lengths), 3, dtype=torch.bool))
    schedule = schedule if schedule is not None else LinearMasking()
    out = sampler.sample(oracle, schedule, corruption or AbsorbingCorruption(), cond, max(lengths), mask, torch.Generator().manual_seed(1))
    return out, target.masked_fill(~mask, 0), oracle


SAMPLERS = [
    MaskPredictSampler(steps=4),
    MaskPredictSampler(steps=4, rescore=False, rule=CosineMasking()),
    DiscreteAncestralSampler(steps=6),
    DiscreteAncestralSampler(steps=6, temperature=1.0),
    ConfidenceThresholdSampler(steps=5),
    TauLeapingSampler(steps=5),
]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.describe())
def test_oracle_denoiser_is_recovered_exactly(sampler) -> None:
    out, target, _ = run(sampler)
    assert torch.equal(out.token_ids, target)
    assert 1 <= out.nfe <= sampler.steps


@pytest.mark.parametrize("corruption", [UniformCorruption(), MaskAndReplaceCorruption(0.2)], ids=["uniform", "mask_and_replace"])
@pytest.mark.parametrize("sampler", [MaskPredictSampler(steps=4), DiscreteAncestralSampler(steps=6)], ids=["mask_predict", "ancestral"])
def test_non_absorbing_corruption_is_recovered(sampler, corruption) -> None:
    out, target, _ = run(sampler, corruption)
    assert torch.equal(out.token_ids, target)


def test_decided_counts_follow_the_rule() -> None:
    assert decided_counts(torch.tensor([10]), LinearMasking(), 5)[:, 0].tolist() == [2, 4, 6, 8, 10]
    cosine = decided_counts(torch.tensor([20, 3]), CosineMasking(), 6)
    assert cosine[-1].tolist() == [20, 3]
    assert bool((cosine[1:] >= cosine[:-1]).all())
    steps = cosine[:, 0].diff().tolist()
    assert steps[0] <= steps[-1]  # cosine decides few first and most last
    assert cosine[:3, 1].tolist() == [1, 2, 3]  # at least one more per step while any is left


def test_mask_predict_unmasks_by_the_rule_and_keeps_decided_tokens() -> None:
    """Without re-scoring, the denoiser sees ``L - n_{k-1}`` masks at step ``k``."""
    _, _, oracle = run(MaskPredictSampler(steps=5, rescore=False), lengths=(10,))
    assert [int(m) for m in torch.stack(oracle.masked_seen)[:, 0]] == [10, 8, 6, 4, 2]


def test_re_masking_samplers_feed_the_schedule_time_of_the_masked_share() -> None:
    """A linear rule leaves 10, 8, 6, 4, 2 of 10 masked; a cosine-trained model is fed t = (2 / pi) asin(share),
    the time at which its training masked that share; ``grid_time`` feeds 1, 0.8, ... as before."""
    shares = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2])
    for sampler in (MaskPredictSampler(steps=5), MaskPredictSampler(steps=5, rescore=False)):
        _, _, oracle = run(sampler, lengths=(10,), schedule=CosineMasking())
        assert torch.allclose(torch.cat(oracle.times_seen), (2 / torch.pi) * torch.asin(shares), atol=1e-6)
    _, _, oracle = run(MaskPredictSampler(steps=5, grid_time=True), lengths=(10,), schedule=CosineMasking())
    assert torch.allclose(torch.cat(oracle.times_seen), shares)
    # rows of different lengths get their own shares: 3 of 7 (7 - floor(7 / 2) decided) and 2 of 4 still masked
    _, _, oracle = run(MaskPredictSampler(steps=2), lengths=(7, 4), schedule=LinearMasking())
    assert torch.allclose(oracle.times_seen[1], torch.tensor([3 / 7, 2 / 4]))
    unsure = Oracle(torch.zeros(1, 5, dtype=torch.long), sure=1.0)  # every pick below the threshold: one per step
    cond = unsure.encode(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool))
    ConfidenceThresholdSampler(steps=3).sample(unsure, LinearMasking(), AbsorbingCorruption(), cond, 5)
    assert torch.allclose(torch.cat(unsure.times_seen), torch.tensor([1.0, 0.8, 0.6]))


def test_ancestral_skips_calls_when_nothing_changed() -> None:
    out, target, _ = run(DiscreteAncestralSampler(steps=60), lengths=(3, 2))
    assert torch.equal(out.token_ids, target)
    assert out.nfe < 60  # at most one call per step that unmasked something


def test_threshold_sampler_stops_early_when_sure() -> None:
    out, target, _ = run(ConfidenceThresholdSampler(steps=16, threshold=0.5))
    assert torch.equal(out.token_ids, target)
    assert out.nfe == 1  # every pick is above the threshold at the first call


def test_tau_leaping_needs_absorbing() -> None:
    with pytest.raises(ValueError, match="absorbing"):
        run(TauLeapingSampler(steps=3), UniformCorruption())


def test_repeated_picks_flag_the_less_confident_of_each_equal_pair() -> None:
    from lightning_diffusion.discrete.samplers import repeated_picks

    tokens = torch.tensor([[4, 4, 5, 6, 6, 6]])
    scores = torch.tensor([[0.9, 0.5, 0.7, 0.2, 0.8, 0.3]])
    exists = torch.tensor([[True, True, True, True, True, False]])
    assert repeated_picks(tokens, scores, exists).tolist() == [[False, True, False, True, False, False]]


def test_avoid_repeats_re_masks_a_repeat_so_it_is_predicted_again() -> None:
    """A denoiser that answers ``7 7 3`` when nothing is decided but ``7 8 3`` once position 0 is. Two of three
    positions are decided at the first of two steps: the plain rule keeps the repeat it decided; avoid_repeats
    re-masks the less confident 7, which is predicted again with position 0 known."""

    class Contextual(Oracle):
        def hidden_states(self, x_t, t, cond, tgt_mask=None):
            logits = torch.zeros(x_t.shape[0], x_t.shape[1], V)
            logits[:, 0, 7] = 10.0
            known = bool(x_t[0, 0] == 7)
            logits[:, 1, 8 if known else 7] = 9.5
            logits[:, 2, 3] = 5.0
            return logits

    cond = Conditioning(hidden=torch.zeros(1, 1, 8), mask=torch.ones(1, 1, dtype=torch.bool))
    for avoid, expected in ((False, [7, 7, 3]), (True, [7, 8, 3])):
        sampler = MaskPredictSampler(steps=2, avoid_repeats=avoid)
        out = sampler.sample(Contextual(torch.zeros(1, 3, dtype=torch.long)), LinearMasking(), AbsorbingCorruption(), cond, 3)
        assert out.token_ids.tolist() == [expected], avoid
    assert "repeats re-masked" in MaskPredictSampler(avoid_repeats=True).describe()


def test_token_choice_in_place_equals_the_kept_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 50) * 4
    ids, probs = token_choice(logits, 0.0)
    expected = torch.softmax(logits, -1).max(-1)
    assert torch.equal(ids, expected.indices) and torch.allclose(probs, expected.values, atol=1e-6)
    consumed = logits.clone()
    ids_c, probs_c = token_choice(consumed, 0.0, consume=True)
    assert torch.equal(ids_c, ids) and torch.allclose(probs_c, probs, atol=1e-6)
    assert not torch.equal(consumed, logits)  # the caller's tensor was used as scratch, as documented
    kept = logits.clone()
    token_choice(kept, 0.0)
    assert torch.equal(kept, logits)  # without consume the input is left alone


@pytest.mark.parametrize("sampler", [MaskPredictSampler(steps=4), ConfidenceThresholdSampler(steps=5)], ids=lambda s: type(s).__name__)
def test_scoring_samplers_return_the_mean_log_probability_of_their_tokens(sampler) -> None:
    """The oracle puts logit ``sure + ramp_l`` on the true token at position ``l`` and 0 elsewhere, whatever it is
    shown, so each decided token's probability is ``e^s / (e^s + V - 1)``; a sequence's score is the mean log of
    those over its own positions (mask-predict's length-beam score)."""
    lengths = (7, 4)
    out, _, _ = run(sampler, lengths=lengths)
    assert sampler.scores_tokens and out.scores is not None and out.scores.shape == (2,)
    s = 30.0 + torch.linspace(0.0, 1.0, max(lengths), dtype=torch.float64)
    log_p = s - torch.log(torch.exp(s) + (V - 1))
    expected = torch.stack([log_p[:n].mean() for n in lengths]).float()
    torch.testing.assert_close(out.scores, expected, rtol=0, atol=1e-6)


def test_mean_log_probability_counts_existing_positions_only() -> None:
    probs = torch.tensor([[0.5, 0.25, 0.0], [1.0, 0.0, 0.0]])
    exists = torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(mean_log_probability(probs, exists), torch.tensor([(-0.6931472 - 1.3862944) / 2, 0.0]))


def test_samplers_that_do_not_score_say_so() -> None:
    out, _, _ = run(DiscreteAncestralSampler(steps=6))
    assert out.scores is None and not DiscreteAncestralSampler.scores_tokens and not TauLeapingSampler.scores_tokens
