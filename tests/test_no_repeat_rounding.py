"""Rounding without back-to-back repeats: the Viterbi path is the best sequence under the penalty (checked against
enumeration), equals the argmax at penalty 0, and leaves end / padding runs alone."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lightning_diffusion.samplers.no_repeat_rounding import best_sequence_without_repeats


def brute_force(scores: torch.Tensor, ids: torch.Tensor, counted: torch.Tensor, penalty: float) -> list[int]:
    length, k = scores.shape
    best, best_path = -math.inf, None
    for path in itertools.product(range(k), repeat=length):
        total = sum(float(scores[i, c]) for i, c in enumerate(path))
        for i in range(1, length):
            if ids[i, path[i]] == ids[i - 1, path[i - 1]] and counted[i, path[i]] and counted[i - 1, path[i - 1]]:
                total -= penalty
        if total > best:
            best, best_path = total, path
    assert best_path is not None
    return [int(ids[i, c]) for i, c in enumerate(best_path)]


def test_a_hand_computed_case() -> None:
    # position 0: "a" -0.1, "b" -2.5; position 1: "a" -0.2, "c" -3.0. Argmax: "a a" (-0.3, a repeat).
    scores = torch.tensor([[[-0.1, -2.5], [-0.2, -3.0]]])
    ids = torch.tensor([[[7, 8], [7, 9]]])
    counted = torch.ones_like(ids, dtype=torch.bool)
    assert best_sequence_without_repeats(scores, ids, counted, 0.0).tolist() == [[7, 7]]
    # "a a" - 2 = -2.3 beats "b a" = -2.7 and "a c" = -3.1
    assert best_sequence_without_repeats(scores, ids, counted, 2.0).tolist() == [[7, 7]]
    # "b a" = -2.7 beats "a a" - 3 = -3.3 and "a c" = -3.1
    assert best_sequence_without_repeats(scores, ids, counted, 3.0).tolist() == [[8, 7]]
    assert best_sequence_without_repeats(scores, ids, counted, math.inf).tolist() == [[8, 7]]
    # a repeat that is not counted (an end or padding id) costs nothing
    assert best_sequence_without_repeats(scores, ids, torch.zeros_like(counted), math.inf).tolist() == [[7, 7]]


@pytest.mark.parametrize("penalty", [0.0, 0.5, 2.0, math.inf])
def test_the_viterbi_path_is_the_enumerated_optimum(penalty: float) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        length, k = 5, 3
        scores = torch.randn(length, k, generator=g).log_softmax(-1)
        ids = torch.stack([torch.randperm(4, generator=g)[:k] for _ in range(length)])  # few ids: many repeats
        counted = ids != 0  # id 0 plays padding
        got = best_sequence_without_repeats(scores[None], ids[None], counted[None], penalty)[0].tolist()
        assert got == brute_force(scores, ids, counted, penalty)


def test_penalty_zero_is_the_argmax_and_bad_penalties_are_refused() -> None:
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 6, 4, generator=g)
    ids = torch.randint(0, 5, (3, 6, 4), generator=g)
    chosen = best_sequence_without_repeats(scores, ids, torch.ones_like(ids, dtype=torch.bool), 0.0)
    assert torch.equal(chosen, ids.gather(2, scores.argmax(-1, keepdim=True)).squeeze(-1))
    with pytest.raises(ValueError, match="repeat penalty must be >= 0"):
        best_sequence_without_repeats(scores, ids, torch.ones_like(ids, dtype=torch.bool), -1.0)


def test_round_without_repeats_reads_the_kept_head_and_leaves_end_and_padding_runs() -> None:
    """Latents built so that neighbours lean to one word: argmax repeats it, the rounding (penalty inf) does not, and
    a run of an exempt id (padding) is kept; chunking over rows does not change the result."""
    from tiny_continuous import make_module

    from lightning_diffusion.samplers.no_repeat_rounding import round_without_repeats

    module = make_module("encoder_decoder", self_conditioning=False)
    table = module.denoiser.embedding_table().detach()  # [V, D]
    own = [i for i in range(table.shape[0]) if int((table @ table[i]).argmax()) == i]  # ids their embedding rounds to
    a, b, c, d, pad, eos = own[:6]
    words = torch.tensor([[a, a, b, b, pad, pad], [c, d, d, d, eos, pad]])
    z = table[words] + 0.01 * torch.randn(2, 6, table.shape[1], generator=torch.Generator().manual_seed(0))
    argmax = module.denoiser.logits(z).argmax(-1)
    assert torch.equal(argmax, words)
    chosen = round_without_repeats(module.denoiser, z, None, exempt=(pad, eos), penalty=math.inf)
    real = ~torch.isin(chosen, torch.tensor([pad, eos]))
    assert not ((chosen[:, 1:] == chosen[:, :-1]) & real[:, 1:] & real[:, :-1]).any()
    assert chosen[0, 4:].tolist() == [pad, pad]  # padding may repeat
    assert torch.equal(chosen, round_without_repeats(module.denoiser, z, None, exempt=(pad, eos), penalty=math.inf, max_elements=1))
    # across the end of the positions that exist a repeat costs nothing
    mask = torch.tensor([[True, False, True, True, True, True], [True] * 6])
    masked = round_without_repeats(module.denoiser, z, mask, exempt=(pad, eos), penalty=math.inf)
    assert masked[0, :2].tolist() == [a, a]


def test_generate_applies_the_repeat_penalty_per_call_and_other_models_refuse_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from tiny_continuous import make_batch, make_module

    import lightning_diffusion.module as module_file
    from lightning_diffusion.autoregressive import AutoregressiveLM, TransformerSeq2Seq
    from lightning_diffusion.decoding import DecodingError

    module = make_module("encoder_decoder", self_conditioning=False, length_mode=True, length_beam=2)
    batch = make_batch()
    calls = []
    original = module_file.round_without_repeats

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((args, out))
        return out

    monkeypatch.setattr(module_file, "round_without_repeats", spy)
    module.eval()
    module.generate(batch.src_ids, batch.src_mask)
    assert not calls  # the model's own decoding rounds by argmax
    decoding = module.decoding.replace(repeat_penalty=math.inf)
    assert "rounding with repeat penalty inf" in module.decoding_settings(decoding)
    module.generate(batch.src_ids, batch.src_mask, decoding=decoding)
    assert calls and all(args[2] is not None for args, _ in calls)  # length groups: the candidates' masks
    for args, out in calls:
        mask, exempt = args[2], torch.tensor(args[3])
        real = mask & ~torch.isin(out, exempt)
        assert not ((out[:, 1:] == out[:, :-1]) & real[:, 1:] & real[:, :-1]).any()
    assert module.decoding.repeat_penalty == 0.0  # a per-call value: the model is not changed

    with pytest.raises(DecodingError, match="repeat_penalty must be a number >= 0"):
        module.decoding.replace(repeat_penalty=-1.0)
    ar = AutoregressiveLM(network=lambda v: TransformerSeq2Seq(v, hidden_dim=16, encoder_layers=1, decoder_layers=1, num_heads=2, ffn_dim=32), vocab_size=40)
    with pytest.raises(DecodingError, match="repeat_penalty applies to the rounding of continuous diffusion models"):
        ar.decoding.replace(repeat_penalty=1.0)


def test_the_penalty_takes_any_real_number_or_inf_as_typed() -> None:
    import numpy as np

    from lightning_diffusion.decoding import Decoding, DecodingError
    from lightning_diffusion.samplers import DDIMSampler

    decoding = Decoding(sampler=DDIMSampler(steps=2))
    assert decoding.replace(repeat_penalty="inf").repeat_penalty == math.inf
    assert decoding.replace(repeat_penalty=np.float32(2.5)).repeat_penalty == 2.5
    assert isinstance(decoding.replace(repeat_penalty=3).repeat_penalty, float)
    for bad in (-1.0, float("nan"), "three", True):
        with pytest.raises(DecodingError, match="repeat_penalty must be a number >= 0"):
            decoding.replace(repeat_penalty=bad)
    # a huge finite penalty is no NaN: it forbids the repeat like inf
    scores = torch.tensor([[[-0.1, -2.5], [-0.2, -3.0]]])
    ids = torch.tensor([[[7, 8], [7, 9]]])
    counted = torch.ones_like(ids, dtype=torch.bool)
    assert best_sequence_without_repeats(scores, ids, counted, 1e39).tolist() == [[8, 7]]
