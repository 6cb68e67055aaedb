"""Length prediction (Difformer): the predictor, its loss, the module's checks, and decoding with a
length beam x noise beam and MBR."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_diffusion import DiffusionLM
from lightning_diffusion.denoisers import EncoderDecoderDenoiser
from lightning_diffusion.length import LengthPredictor
from lightning_diffusion.losses import X0MSE, AnchorNLL, LengthNLL, LossTerm
from lightning_diffusion.samplers import DDIMSampler
from lightning_diffusion.schedules import SqrtSchedule
from lightning_diffusion.types import Conditioning, LossInputs, SampleOutput, Seq2SeqBatch

HIDDEN = 16
WORDS = ["a", "b", "c", "d", "x", "y", "z", "w", *(f"v{i}" for i in range(32))]


class WordTokenizer:
    """Word-level stand-in for a tokenizer: ``<pad> <unk> <s> </s>`` are ids 0..3, then one word per id."""

    pad_token_id, eos_token_id = 0, 3

    def __init__(self) -> None:
        self.vocab = ["<pad>", "<unk>", "<s>", "</s>", *WORDS]
        self.ids = {word: i for i, word in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(self.vocab[i] for i in ids if not (skip_special_tokens and i < 4))


TOK = WordTokenizer()
EOS = TOK.eos_token_id


def denoiser_factory() -> functools.partial[EncoderDecoderDenoiser]:
    return functools.partial(
        EncoderDecoderDenoiser, latent_dim=8, hidden_dim=HIDDEN, encoder_layers=1, decoder_layers=1, num_heads=2,
        ffn_dim=32, dropout=0.0, max_positions=32,
    )  # fmt: skip


def make_module(max_offset: int = 2, **kwargs: Any) -> DiffusionLM:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        denoiser=denoiser_factory(), schedule=SqrtSchedule(30), loss_terms=[X0MSE(), AnchorNLL(), LengthNLL()],
        sampler=DDIMSampler(steps=3), vocab_size=len(TOK),
        length_predictor=functools.partial(LengthPredictor, max_offset=max_offset), max_length=10,
    )  # fmt: skip
    options.update(kwargs)
    module = DiffusionLM(**options).eval()
    module.attach_tokenizer(TOK, "word-tokenizer")
    return module


# ---------------------------------------------------------------------------------------------- predictor


def test_pooling_is_a_masked_mean_that_ignores_padding() -> None:
    torch.manual_seed(0)
    predictor = LengthPredictor(HIDDEN, max_offset=4)
    hidden = torch.randn(2, 5, HIDDEN)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    logits = predictor(Conditioning(hidden, mask))
    assert logits.shape == (2, 9)
    torch.testing.assert_close(logits[1], predictor.head(hidden[1, :3].mean(0)))
    torch.testing.assert_close(logits[0], predictor.head(hidden[0].mean(0)))
    changed = hidden.clone()
    changed[1, 3:] = 100.0
    torch.testing.assert_close(predictor(Conditioning(changed, mask)), logits)
    changed[1, 0] += 1.0
    assert not torch.allclose(predictor(Conditioning(changed, mask))[1], logits[1])


@pytest.mark.parametrize("detach", [False, True])
def test_detach_stops_gradients_at_the_conditioning(detach: bool) -> None:
    torch.manual_seed(0)
    predictor = LengthPredictor(HIDDEN, max_offset=3, detach=detach)
    hidden = torch.randn(2, 4, HIDDEN, requires_grad=True)
    logits = predictor(Conditioning(hidden, torch.ones(2, 4, dtype=torch.bool)))
    F.cross_entropy(logits, torch.tensor([1, 5])).backward()
    if detach:
        assert hidden.grad is None
    else:
        assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in predictor.parameters())


def test_detach_in_the_module_keeps_the_length_loss_out_of_the_encoder() -> None:
    batch = _batch_with_targets()
    grads = {}
    for detach in (False, True):
        module = make_module(
            loss_terms=[X0MSE(weight=0.0), LengthNLL()],  # only the length loss reaches the encoder
            length_predictor=functools.partial(LengthPredictor, max_offset=2, detach=detach),
        )
        module.train()
        loss, *_ = module.compute_losses(batch)
        loss.backward()
        grads[detach] = module.denoiser.encoder.token_embedding.weight.grad
    assert grads[False] is not None and grads[False].abs().sum() > 0
    assert grads[True] is None or grads[True].abs().sum() == 0


def test_targets_are_clamped_offset_classes() -> None:
    predictor = LengthPredictor(HIDDEN, max_offset=3)
    src = torch.tensor([5, 5, 5, 2, 1])
    tgt = torch.tensor([5, 9, 1, 2, 4])
    assert predictor.targets(src, tgt).tolist() == [3, 6, 0, 3, 6]  # offsets 0, +4 -> +3, -4 -> -3, 0, +3
    assert predictor.targets(src, tgt).dtype == torch.long


def test_top_lengths_ordered_by_probability_and_clipped() -> None:
    predictor = LengthPredictor(HIDDEN, max_offset=2)  # classes: offsets -2, -1, 0, +1, +2
    logits = torch.tensor(
        [
            [0.0, 1.0, 5.0, 3.0, 2.0],  # src 4: offsets 0, +1, +2 -> 4, 5, 6
            [9.0, 8.0, 0.0, 0.0, 1.0],  # src 1: offsets -2, -1, +2 -> -1, 0, 3 -> clipped 1, 1, 3
            [0.0, 0.5, 1.0, 2.0, 3.0],  # src 10: offsets +2, +1, 0 -> 12, 11, 10 -> clipped at 11
        ]
    )
    src = torch.tensor([4, 1, 10])
    top = predictor.top_lengths(logits, src, beam=3, max_length=11)
    assert top.tolist() == [[4, 5, 6], [1, 1, 3], [11, 11, 10]]
    assert predictor.top_lengths(logits, src, beam=1, max_length=11).tolist() == [[4], [1], [11]]
    assert predictor.top_lengths(logits, src, beam=9, max_length=100).shape == (3, 5)  # at most one per class
    assert predictor.top_lengths(logits, src, beam=9, max_length=100)[0].tolist() == [4, 5, 6, 3, 2]


# ---------------------------------------------------------------------------------------------- loss + module


def _inputs(length_logits: Tensor | None, length_targets: Tensor | None) -> LossInputs:
    z = torch.zeros(2, 1, 2)
    return LossInputs(
        z0=z, x0_hat=z, target_ids=torch.zeros(2, 1, dtype=torch.long), mask=torch.ones(2, 1, dtype=torch.bool),
        t=torch.ones(2, dtype=torch.long), alpha_bar_final=torch.zeros(2, 1), logits=lambda x: x,
        length_logits=length_logits, length_targets=length_targets,
    )  # fmt: skip


def test_length_nll_hand_computed() -> None:
    term = LengthNLL()
    assert term.name == "length" and term.weight == 0.1 and term.needs_length_predictor
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    loss = term(_inputs(logits, torch.tensor([0, 2])))
    expected = [-(2.0 - math.log(math.exp(2.0) + 2.0)), math.log(3.0)]
    torch.testing.assert_close(loss, torch.tensor(expected))
    with pytest.raises(ValueError, match="length_predictor"):
        term(_inputs(None, None))


def test_module_checks_length_configuration() -> None:
    with pytest.raises(ValueError, match="need a length_predictor"):
        make_module(length_predictor=None)
    with pytest.raises(ValueError, match="LengthNLL"):
        make_module(loss_terms=[X0MSE(), AnchorNLL()])
    with pytest.raises(ValueError, match="length_beam"):
        make_module(length_predictor=None, loss_terms=[X0MSE()], length_beam=2)
    with pytest.raises(ValueError, match="length_beam"):
        make_module(length_beam=0)
    assert make_module(length_predictor=None, loss_terms=[X0MSE()]).length_predictor is None


class Recorder(LossTerm):
    default_name = "recorder"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[LossInputs] = []

    def forward(self, inputs: LossInputs) -> Tensor:
        self.seen.append(inputs)
        return torch.zeros(inputs.target_ids.shape[0])


def _batch_with_targets() -> Seq2SeqBatch:
    return Seq2SeqBatch(
        src_ids=torch.tensor([[4, 5, 6], [7, 8, 0]]), src_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]).bool(),
        index=torch.arange(2), src_text=["a b c", "d x"],
        tgt_ids=torch.tensor([[9, 10, 11, 4, 5, EOS], [6, EOS, 0, 0, 0, 0]]),
        tgt_mask=torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]).bool(), tgt_text=["y z w a b", "c"],
    )  # fmt: skip


def test_length_mode_training_uses_exact_targets_and_offset_classes() -> None:
    recorder = Recorder()
    module = make_module(loss_terms=[recorder, LengthNLL()])
    attention_masks: list[Tensor | None] = []
    module.denoiser.register_forward_pre_hook(lambda _m, args: attention_masks.append(args[3]))
    batch = _batch_with_targets()
    loss, terms, _, _ = module.compute_losses(batch)
    (seen,) = recorder.seen
    assert torch.equal(seen.target_ids, batch.tgt_ids)  # no canvas padding in length mode
    assert torch.equal(seen.mask, batch.tgt_mask)
    assert attention_masks and all(m is not None and torch.equal(m, batch.tgt_mask) for m in attention_masks)
    assert seen.length_targets.tolist() == [4, 2]  # clamp(6 - 3, -2, 2) + 2 and (2 - 2) + 2
    assert seen.length_logits.shape == (2, 5)
    expected = F.cross_entropy(seen.length_logits, seen.length_targets)
    torch.testing.assert_close(terms["length"], expected)
    torch.testing.assert_close(loss, 0.1 * expected)


# ---------------------------------------------------------------------------------------------- decoding


def _ids(text: str) -> list[int]:
    return [TOK.ids[w] for w in text.split()]


class FakeSampler:
    """Returns fixed token ids, records what it was asked to decode."""

    steps = 5

    def __init__(self, token_ids: Tensor) -> None:
        self.token_ids = token_ids
        self.calls: list[dict[str, Any]] = []

    def sample(
        self, denoiser: Any, schedule: Any, cond: Conditioning, length: int, tgt_mask: Tensor | None, *_: Any
    ) -> SampleOutput:
        self.calls.append({"rows": cond.hidden.shape[0], "length": length, "tgt_mask": tgt_mask})
        b = self.token_ids.shape[0]
        return SampleOutput(latents=torch.zeros(b, length, 8), token_ids=self.token_ids, nfe=self.steps)

    def describe(self) -> str:
        return "FakeSampler"


def _offset_logits(best: int, second: int, max_offset: int = 2) -> list[float]:
    row = [0.0] * (2 * max_offset + 1)
    row[best + max_offset], row[second + max_offset] = 5.0, 4.0
    return row


def test_length_beam_noise_beam_mbr_picks_the_consensus(monkeypatch: pytest.MonkeyPatch) -> None:
    module = make_module(length_beam=2, noise_beam=3)
    # Source 0 (3 tokens): lengths 4 then 3. Source 1 (2 tokens): lengths 4 then 1.
    logits = torch.tensor([_offset_logits(+1, 0), _offset_logits(+2, -1)])
    monkeypatch.setattr(module.length_predictor, "forward", lambda cond: logits[: cond.hidden.shape[0]])
    rows = [
        "a b c </s>", "x y </s> a", "a b c d",  # source 0, length 4
        "a b c d", "x y z a", "c b a d",  # source 0, length 3: the 4th token is cut
        "x y z </s>", "x y z </s>", "a b </s> </s>",  # source 1, length 4
        "x y z w", "a b c d", "b a b a",  # source 1, length 1
    ]  # fmt: skip
    sampler = FakeSampler(torch.tensor([_ids(r) for r in rows]))
    module.decoding = module.decoding.replace(sampler=sampler)
    candidates: list[list[str]] = []
    real_select = module.decoding.selection.select

    def spy_select(texts: list[str]) -> int:
        candidates.append(list(texts))
        return real_select(texts)

    monkeypatch.setattr(module.decoding.selection, "select", spy_select)
    batch = Seq2SeqBatch(
        src_ids=torch.tensor([[4, 5, 6], [8, 9, 0]]), src_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]).bool(),
        index=torch.tensor([7, 8]), src_text=["a b c", "x y"],
    )  # fmt: skip
    assert not batch.has_targets
    out = module.predict_step(batch, 0)  # a batch without references decodes

    (call,) = sampler.calls
    assert call["rows"] == 12 and call["length"] == 4
    assert call["tgt_mask"].sum(-1).tolist() == [4, 4, 4, 3, 3, 3, 4, 4, 4, 1, 1, 1]
    assert candidates == [
        ["a b c", "x y", "a b c d", "a b c", "x y z", "c b a"],
        ["x y z", "x y z", "a b", "x", "a", "b"],
    ]
    assert [row["hypothesis"] for row in out] == ["a b c", "x y z"]
    assert [row["index"] for row in out] == [7, 8]
    assert all("reference" not in row for row in out)

    # References, when present, are reported but never consulted: the choice is the same.
    candidates.clear()
    with_refs = Seq2SeqBatch(
        src_ids=batch.src_ids, src_mask=batch.src_mask, index=batch.index, src_text=batch.src_text,
        tgt_ids=torch.tensor([[6, 5, 4, EOS], [5, EOS, 0, 0]]), tgt_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool(),
        tgt_text=["c b a", "b"],
    )  # fmt: skip
    out_refs = module.predict_step(with_refs, 0)
    assert [row["hypothesis"] for row in out_refs] == ["a b c", "x y z"]
    assert [row["reference"] for row in out_refs] == ["c b a", "b"]
    assert all(len(texts) == 6 and "c b a d" not in texts for texts in candidates)


def test_decoded_candidates_honour_their_predicted_lengths(monkeypatch: pytest.MonkeyPatch) -> None:
    module = make_module(max_offset=3, length_beam=3, noise_beam=2, max_length=8)
    raw: list[Tensor] = []
    masks: list[Tensor] = []
    decoded: list[tuple[Tensor, list[str]]] = []
    sample, decode = module.sampler.sample, module.decode_ids

    def spy_sample(*args: Any, **kwargs: Any) -> SampleOutput:
        out = sample(*args, **kwargs)
        raw.append(out.token_ids)
        masks.append(args[4])
        return out

    def spy_decode(token_ids: Tensor, **kwargs: Any) -> list[str]:
        texts = decode(token_ids, **kwargs)
        decoded.append((token_ids, texts))
        return texts

    monkeypatch.setattr(module.sampler, "sample", spy_sample)
    monkeypatch.setattr(module, "decode_ids", spy_decode)
    src = torch.randint(4, len(TOK), (3, 4), generator=torch.Generator().manual_seed(0))
    src_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]).bool()
    out = module.generate(src, src_mask, torch.Generator().manual_seed(0))
    assert out.candidates == 6 and len(out.texts) == 3

    (tgt_mask,) = masks
    lengths = tgt_mask.sum(-1)
    with torch.no_grad():
        top = module.length_predictor.top_lengths(
            module.length_predictor(module.denoiser.encode(src, src_mask)), src_mask.sum(-1), 3, 8
        )
    assert torch.equal(lengths, top.repeat_interleave(2, dim=1).reshape(-1))
    assert torch.equal(tgt_mask, torch.arange(tgt_mask.shape[1])[None] < lengths[:, None])  # prefixes
    (token_ids, texts), (canvas,) = decoded[0], raw
    assert token_ids.shape == canvas.shape == (18, int(lengths.max()))
    assert bool((token_ids[~tgt_mask] == EOS).all())
    assert torch.equal(token_ids[tgt_mask], canvas[tgt_mask])
    assert bool((canvas[~tgt_mask] != EOS).any()), "the raw canvas should have words past some lengths"
    for row, text in enumerate(texts):
        n = int(lengths[row])
        kept = canvas[row, :n].tolist()
        kept = kept[: kept.index(EOS)] if EOS in kept else kept
        assert len(text.split()) <= n
        assert text == TOK.decode(kept)
    assert set(out.texts) <= set(texts)


@pytest.mark.parametrize("guided", [False, True], ids=["plain", "classifier_free_guidance"])
def test_length_groups_decode_what_one_canvas_decodes(monkeypatch: pytest.MonkeyPatch, guided: bool) -> None:
    """Candidates of similar predicted length are decoded together on a canvas as long as their longest: every row
    gets the tokens it gets on the batch's one canvas (no noise here, so only the grouping differs; under guidance
    the null branch follows each group's rows), and the progress callback counts the steps of every group."""
    import lightning_diffusion.module as module_module
    from lightning_diffusion.guidance import ClassifierFreeGuidance

    sampler = DDIMSampler(steps=3, noise_factor=0.0)
    module = make_module(max_offset=3, length_beam=3, max_length=8, sampler=sampler, condition_dropout=0.1 if guided else 0.0)
    if guided:
        with torch.no_grad():
            module.null_condition.normal_()  # a null condition unlike any source state
        module.decoding = module.decoding.replace(guidance=ClassifierFreeGuidance(2.0))
    src = torch.randint(4, len(TOK), (3, 4), generator=torch.Generator().manual_seed(0))
    src_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]).bool()
    real = module_module.length_groups
    seen: list[int] = []
    canvases: list[int] = []
    sample = module.sampler.sample

    def spy_sample(*args: Any, **kwargs: Any) -> SampleOutput:
        canvases.append(args[3])
        return sample(*args, **kwargs)

    def groups_with(overhead: int) -> Any:
        def split(lengths: Tensor) -> list[Tensor]:
            out = real(lengths, overhead)
            seen.append(len(out))
            return out

        return split

    monkeypatch.setattr(module.sampler, "sample", spy_sample)
    monkeypatch.setattr(module_module, "length_groups", groups_with(10**9))
    one = module.generate(src, src_mask)
    monkeypatch.setattr(module_module, "length_groups", groups_with(0))
    progress: list[tuple[int, int]] = []
    many = module.generate(src, src_mask, on_step=lambda done, total: progress.append((done, total)))
    assert seen[0] == 1 and seen[1] > 1  # the second decode really split the candidates
    assert len(canvases) == 1 + seen[1] and max(canvases[1:]) == canvases[0] > min(canvases[1:])
    assert many.texts == one.texts
    assert many.nfe == one.nfe == 3 * (2 if guided else 1) and many.candidates == one.candidates == 3
    assert progress == [(i, 3 * seen[1]) for i in range(1, 3 * seen[1] + 1)]
