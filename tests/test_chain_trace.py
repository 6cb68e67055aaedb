"""The chain trace: per sampler step, repeated tokens and tokens that differ from the chain's output."""

from __future__ import annotations

import pytest
import torch
from tiny_continuous import make_batch, make_module

from lightning_diffusion import DiffusionLM
from lightning_diffusion.chain_trace import _chains, _has_repeat, chain_trace, hypothesis_positions
from lightning_diffusion.decoding import Decoding
from lightning_diffusion.samplers import DDIMSampler
from lightning_diffusion.types import Seq2SeqBatch


def trace_module(length_predictor: bool) -> DiffusionLM:
    """An encoder-decoder model (no self-conditioning) sampled by DDIM in 5 steps, with or without a length predictor."""
    return make_module("encoder_decoder", self_conditioning=False, length_mode=length_predictor, sampler=DDIMSampler(steps=5))


def batch() -> Seq2SeqBatch:
    return make_batch(3)


@pytest.mark.parametrize("length_predictor", [False, True])
def test_one_row_per_step_and_the_last_estimate_is_the_output(length_predictor: bool) -> None:
    module = trace_module(length_predictor)
    decoding = module.decoding.replace(length_beam=2) if length_predictor else module.decoding.replace(noise_beam=2)
    rows = chain_trace(module, [batch(), batch()], decoding)
    assert [r.step for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].t == 40 and rows[-1].t < rows[0].t
    assert all(r.sequences == 2 * 3 * 2 for r in rows)  # 2 batches x 3 sources x 2 candidates
    assert rows[-1].changed_positions == 0  # the last estimate against itself
    assert len({r.positions for r in rows}) == 1  # every step is scored on the output's hypothesis positions
    assert all(0 <= r.changed_positions <= r.positions and 0 <= r.repeated_sequences <= r.sequences for r in rows)
    assert module.denoiser._forward_hooks == {}  # the recorder is removed


def test_for_ddim_the_last_estimate_is_the_output() -> None:
    # What the trace scores against: the argmax of the last denoiser call equals the tokens the sampler returns.
    module = trace_module(True).eval()
    b = batch()
    cond = module.denoiser.encode(b.src_ids, b.src_mask)
    estimates = []
    handle = module.denoiser.register_forward_hook(lambda _m, _a, out: estimates.append(out))
    tgt_mask = torch.ones(3, 6, dtype=torch.bool)
    out = module.sampler.sample(module.denoiser, module.schedule, cond, 6, tgt_mask, torch.Generator().manual_seed(0))
    handle.remove()
    assert len(estimates) == 5
    assert torch.equal(module.denoiser.logits(estimates[-1]).argmax(-1), out.token_ids)


def test_the_trace_does_not_change_what_is_decoded() -> None:
    module = trace_module(True)
    before = module.generate(batch().src_ids, batch().src_mask, torch.Generator().manual_seed(0))
    chain_trace(module, [batch()])
    after = module.generate(batch().src_ids, batch().src_mask, torch.Generator().manual_seed(0))
    assert before.texts == after.texts


def test_calls_split_into_chains_where_the_step_label_goes_back_up() -> None:
    ids = torch.zeros(1, 1, dtype=torch.long)
    calls = [(40, ids, None), (20, ids, None), (1, ids, None), (40, ids, None), (1, ids, None)]
    assert [[c[0] for c in chain] for chain in _chains(calls)] == [[40, 20, 1], [40, 1]]


def test_a_repeat_counts_only_between_counted_positions() -> None:
    ids = torch.tensor([[5, 5, 6], [5, 6, 6], [7, 8, 9]])
    counted = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])
    assert _has_repeat(ids, counted).tolist() == [True, False, False]


def test_only_the_hypothesis_counts_not_what_follows_its_first_end_token() -> None:
    final = torch.tensor([[5, 6, 3, 7, 7], [5, 5, 5, 0, 0], [3, 8, 8, 8, 8]])  # EOS 3, pad 0
    assert hypothesis_positions(final, None, eos=3, pad=0).tolist() == [
        [True, True, False, False, False],
        [True, True, True, False, False],
        [False, False, False, False, False],
    ]
    mask = torch.tensor([[True, False, True, True, True]] * 3)
    assert hypothesis_positions(final, mask, eos=3, pad=0)[0].tolist() == [True, False, False, False, False]


def test_guided_decodings_are_refused() -> None:
    from lightning_diffusion.guidance import ClassifierFreeGuidance

    module = trace_module(True)
    with pytest.raises(ValueError, match="unguided"):
        chain_trace(module, [batch()], Decoding(sampler=DDIMSampler(steps=2), guidance=ClassifierFreeGuidance(2.0)))
