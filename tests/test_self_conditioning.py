"""Self-conditioning: the no-grad first pass in training, and the x0 feed-back in sampling, for both denoisers."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from torch import Tensor

from lightning_diffusion import DiffusionLM
from lightning_diffusion.denoisers import DiffuSeqDenoiser, EncoderDecoderDenoiser
from lightning_diffusion.length import LengthPredictor
from lightning_diffusion.losses import X0MSE, AnchorNLL, LengthNLL
from lightning_diffusion.samplers import AncestralSampler, DDIMSampler
from lightning_diffusion.schedules import SqrtSchedule
from lightning_diffusion.types import Seq2SeqBatch

VOCAB, LATENT, HIDDEN, STEPS = 40, 8, 16, 4


class WordTokenizer:
    pad_token_id, eos_token_id = 0, 3

    def __len__(self) -> int:
        return VOCAB

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(f"w{i}" for i in ids if not (skip_special_tokens and i < 4))


DENOISERS: dict[str, Any] = {
    "diffuseq": functools.partial(
        DiffuSeqDenoiser, latent_dim=LATENT, hidden_dim=HIDDEN, num_layers=1, num_heads=2, ffn_dim=32, max_positions=64
    ),
    "encoder_decoder": functools.partial(
        EncoderDecoderDenoiser, latent_dim=LATENT, hidden_dim=HIDDEN, encoder_layers=1, decoder_layers=1,
        num_heads=2, ffn_dim=32, max_positions=64,
    ),
}  # fmt: skip


def make_module(
    kind: str, self_conditioning: bool = True, length_mode: bool = False, **kwargs: Any
) -> DiffusionLM:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        denoiser=functools.partial(DENOISERS[kind], self_conditioning=self_conditioning, dropout=0.0),
        schedule=SqrtSchedule(40), sampler=DDIMSampler(steps=STEPS), vocab_size=VOCAB, length_offset=2,
    )  # fmt: skip
    if length_mode:
        options.update(
            loss_terms=[X0MSE(), AnchorNLL(), LengthNLL()],
            length_predictor=functools.partial(LengthPredictor, max_offset=3),
        )
    options.update(kwargs)
    module = DiffusionLM(**options)
    module.attach_tokenizer(WordTokenizer(), "words")
    return module


def record_calls(module: DiffusionLM, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Wrap the denoiser's forward: keep its inputs, output and whether gradients were on."""
    calls: list[dict[str, Any]] = []
    forward = module.denoiser.forward

    def spy(
        z_t: Tensor, t: Tensor, cond: Any, tgt_mask: Tensor | None = None, self_cond: Tensor | None = None
    ) -> Tensor:
        out = forward(z_t, t, cond, tgt_mask, self_cond)
        calls.append(
            {"z_t": z_t, "t": t, "cond": cond, "tgt_mask": tgt_mask, "self_cond": self_cond, "out": out,
             "grad": torch.is_grad_enabled()}
        )  # fmt: skip
        return out

    monkeypatch.setattr(module.denoiser, "forward", spy)
    return calls


def make_batch(b: int = 4) -> Seq2SeqBatch:
    g = torch.Generator().manual_seed(0)
    src_len = torch.tensor([4, 3, 2, 4, 1, 3, 2, 4])[:b]
    tgt_len = torch.tensor([5, 2, 3, 4, 2, 5, 3, 1])[:b]
    src_mask = torch.arange(4)[None] < src_len[:, None]
    tgt_mask = torch.arange(5)[None] < tgt_len[:, None]
    src = torch.randint(4, VOCAB, (b, 4), generator=g).masked_fill(~src_mask, 0)
    tgt = torch.randint(4, VOCAB, (b, 5), generator=g).masked_fill(~tgt_mask, 0)
    tgt[torch.arange(b), tgt_len - 1] = 3  # EOS
    return Seq2SeqBatch(
        src_ids=src, src_mask=src_mask, index=torch.arange(b), src_text=[""] * b, tgt_ids=tgt, tgt_mask=tgt_mask,
        tgt_text=[""] * b,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "kind,length_mode", [("diffuseq", False), ("encoder_decoder", False), ("encoder_decoder", True)]
)
def test_training_feeds_the_detached_first_pass_back(
    kind: str, length_mode: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = make_module(kind, length_mode=length_mode, self_condition_prob=1.0).train()
    calls = record_calls(module, monkeypatch)
    batch = make_batch()
    loss, *_ = module.compute_losses(batch)
    assert len(calls) == 2
    first, second = calls
    assert first["self_cond"] is None and not first["grad"]
    assert second["grad"]
    # Same noisy input, steps, conditioning and mask in both passes.
    assert second["z_t"] is first["z_t"] and second["t"] is first["t"] and second["cond"] is first["cond"]
    if length_mode:
        assert torch.equal(first["tgt_mask"], batch.tgt_mask) and torch.equal(
            second["tgt_mask"], batch.tgt_mask
        )
    else:
        assert first["tgt_mask"] is None and second["tgt_mask"] is None
    self_cond = second["self_cond"]
    assert self_cond is not None and torch.equal(self_cond, first["out"])
    assert not self_cond.requires_grad and self_cond.grad_fn is None  # no gradient through the first pass
    assert not first["out"].requires_grad
    assert second["out"].requires_grad
    loss.backward()
    assert module.denoiser.input_proj[0].weight.grad is not None


def test_training_self_condition_prob_picks_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    module = make_module("encoder_decoder", self_condition_prob=0.5).train()
    calls = record_calls(module, monkeypatch)
    torch.manual_seed(3)
    module.compute_losses(make_batch(8))
    first, second = calls
    kinds = []
    for row in range(8):
        if torch.equal(second["self_cond"][row], first["out"][row]):
            kinds.append("fed")
        else:
            assert not second["self_cond"][row].any()
            kinds.append("zero")
    assert set(kinds) == {"fed", "zero"}, kinds


@pytest.mark.parametrize("kind", ["diffuseq", "encoder_decoder"])
def test_training_without_self_conditioning_runs_one_pass(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for self_conditioning in (True, False):
        module = make_module(kind, self_conditioning=self_conditioning, self_condition_prob=0.0).train()
        calls = record_calls(module, monkeypatch)
        module.compute_losses(make_batch())
        assert len(calls) == 1
        assert calls[0]["self_cond"] is None and calls[0]["grad"]
    with pytest.raises(ValueError, match="self_conditioning"):
        make_module(kind, self_conditioning=False, self_condition_prob=0.5)
    with pytest.raises(ValueError, match="self_condition_prob"):
        make_module(kind, self_condition_prob=1.5)


# ---------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("kind", ["diffuseq", "encoder_decoder"])
@pytest.mark.parametrize("sampler_cls", [DDIMSampler, AncestralSampler])
def test_sampling_feeds_back_the_previous_x0_estimate(
    kind: str, sampler_cls: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = make_module(kind, sampler=sampler_cls(steps=STEPS), noise_beam=2).eval()
    calls = record_calls(module, monkeypatch)
    batch = make_batch(3)
    out = module.generate(batch.src_ids, batch.src_mask, torch.Generator().manual_seed(0))
    assert out.nfe == STEPS and len(calls) == STEPS
    assert calls[0]["self_cond"] is None
    for prev, cur in zip(calls, calls[1:], strict=False):
        assert cur["self_cond"] is not None
        assert torch.equal(cur["self_cond"], prev["out"])  # the previous step's x0 estimate
        assert cur["self_cond"].shape == (6, prev["z_t"].shape[1], LATENT)
    assert [int(c["t"][0]) for c in calls] == sorted({int(c["t"][0]) for c in calls}, reverse=True)

    # The feed-back changes the result: the same weights with the feed-back dropped decode other latents.
    def final_latents() -> Tensor:
        cond = module.denoiser.encode(batch.src_ids, batch.src_mask)
        length = module.canvas_length(batch.src_mask)
        sample = module.sampler.sample(
            module.denoiser, module.schedule, cond, length, None, torch.Generator().manual_seed(0)
        )
        return sample.latents

    with torch.no_grad():
        fed = final_latents()
        plain_forward = type(module.denoiser).forward.__get__(module.denoiser)
        monkeypatch.setattr(
            module.denoiser,
            "forward",
            lambda z, t, cond, mask=None, _sc=None: plain_forward(z, t, cond, mask, None),
        )
        assert not torch.allclose(fed, final_latents())


def test_sampling_in_length_mode_feeds_back_with_the_target_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    module = make_module("encoder_decoder", length_mode=True, length_beam=2, noise_beam=2).eval()
    calls = record_calls(module, monkeypatch)
    batch = make_batch(2)
    module.generate(batch.src_ids, batch.src_mask, torch.Generator().manual_seed(0))
    assert len(calls) == STEPS and calls[0]["self_cond"] is None
    for prev, cur in zip(calls, calls[1:], strict=False):
        assert torch.equal(cur["self_cond"], prev["out"])
        assert cur["tgt_mask"] is not None and torch.equal(cur["tgt_mask"], calls[0]["tgt_mask"])
    assert calls[0]["z_t"].shape[0] == 8


def test_denoiser_without_self_conditioning_gets_none_while_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    module = make_module("diffuseq", self_conditioning=False).eval()
    calls = record_calls(module, monkeypatch)
    batch = make_batch(2)
    module.generate(batch.src_ids, batch.src_mask, torch.Generator().manual_seed(0))
    assert len(calls) == STEPS and all(c["self_cond"] is None for c in calls)


def test_training_self_condition_per_batch_feeds_all_rows_or_skips_the_first_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """One coin per batch (Analog Bits, Algorithm 1): either every row gets the first pass's output, or no first
    pass runs at all; over many batches the share of self-conditioned batches is ``self_condition_prob``."""
    module = make_module("encoder_decoder", self_condition_prob=0.5, self_condition_per_batch=True).train()
    calls = record_calls(module, monkeypatch)
    torch.manual_seed(0)
    passes = []
    for _ in range(40):
        calls.clear()
        module.compute_losses(make_batch(4))
        passes.append(len(calls))
        if len(calls) == 2:
            first, second = calls
            assert torch.equal(second["self_cond"], first["out"]) and not first["grad"]
        else:
            assert calls[0]["self_cond"] is None and calls[0]["grad"]
    assert set(passes) == {1, 2} and 10 <= passes.count(2) <= 30
    never = make_module("encoder_decoder", self_condition_prob=0.0, self_condition_per_batch=True).train()
    calls = record_calls(never, monkeypatch)
    never.compute_losses(make_batch(4))
    assert len(calls) == 1
