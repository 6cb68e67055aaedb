"""Self-conditioning: the no-grad first pass in training, and the x0 feed-back in sampling, for both denoisers."""

from __future__ import annotations

import pytest
import torch
from tiny_continuous import LATENT, STEPS, make_batch, make_module, record_calls
from torch import Tensor

from lightning_diffusion.samplers import AncestralSampler, DDIMSampler

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
