"""Guidance, one interface for both diffusion families: condition dropout in training (the learned null condition),
classifier-free guidance (continuous x0 / discrete logits), classifier guidance with a latent scorer, the NFE they
report, their errors, and the CLI (``model.condition_dropout``, ``--decoding.guidance``, ``generate --guidance``)."""

from __future__ import annotations

import functools
import io
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RECIPES_DIR
from torch import Tensor

from lightning_diffusion import DiffusionLM, DiscreteDiffusionLM
from lightning_diffusion.data import tokenizer_fingerprint
from lightning_diffusion.decoding import DecodingError, decode_batch
from lightning_diffusion.denoisers import DiffuSeqDenoiser, EncoderDecoderDenoiser
from lightning_diffusion.discrete import EncoderDecoderTokenDenoiser, MaskPredictSampler, PrefixTokenDenoiser
from lightning_diffusion.discrete.samplers.ancestral import DiscreteAncestralSampler
from lightning_diffusion.discrete.samplers.base import predict_positions
from lightning_diffusion.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    KeywordScorer,
    drop_condition,
)
from lightning_diffusion.guidance.classifier import score_gradient
from lightning_diffusion.guidance.classifier_free import null_like
from lightning_diffusion.length import LengthPredictor
from lightning_diffusion.losses import X0MSE, LengthNLL, PriorLoss, RoundingNLL
from lightning_diffusion.samplers import DDIMSampler
from lightning_diffusion.schedules import SqrtSchedule
from lightning_diffusion.types import Conditioning

DIFFUSEQ = functools.partial(
    DiffuSeqDenoiser, latent_dim=16, hidden_dim=32, num_layers=1, num_heads=2, ffn_dim=64, dropout=0.0, max_positions=128
)
ENC_DEC = functools.partial(
    EncoderDecoderDenoiser, latent_dim=16, hidden_dim=32, encoder_layers=1, decoder_layers=1, num_heads=2, ffn_dim=64,
    dropout=0.0, max_positions=128,
)  # fmt: skip
TOKEN_ENC_DEC = functools.partial(
    EncoderDecoderTokenDenoiser, hidden_dim=32, encoder_layers=1, decoder_layers=1, num_heads=2, ffn_dim=64, dropout=0.0,
    max_positions=128,
)  # fmt: skip
TOKEN_PREFIX = functools.partial(
    PrefixTokenDenoiser, hidden_dim=32, num_layers=1, num_heads=2, ffn_dim=64, dropout=0.0, max_positions=256
)


def continuous(tok: Any, condition_dropout: float = 0.0, denoiser: Any = DIFFUSEQ, **kwargs: Any) -> DiffusionLM:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(sampler=DDIMSampler(steps=3), vocab_size=len(tok), condition_dropout=condition_dropout)
    options.update(kwargs)
    module = DiffusionLM(denoiser=denoiser, schedule=SqrtSchedule(50), **options)
    module.attach_tokenizer(tok, tokenizer_fingerprint(tok))
    return module


def discrete(tok: Any, condition_dropout: float = 0.0, denoiser: Any = TOKEN_ENC_DEC, **kwargs: Any) -> DiscreteDiffusionLM:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(sampler=MaskPredictSampler(steps=3), vocab_size=len(tok), condition_dropout=condition_dropout)
    options.update(kwargs)
    module = DiscreteDiffusionLM(denoiser=denoiser, **options)
    module.attach_tokenizer(tok, tokenizer_fingerprint(tok))
    return module


FAMILIES = {"continuous": continuous, "discrete": discrete}


def with_null_state(module: Any) -> Any:
    """A trained-looking null condition (the parameter starts at zeros)."""
    with torch.no_grad():
        module.null_condition.copy_(torch.randn(module.null_condition.shape, generator=torch.Generator().manual_seed(5)))
    return module.eval()


# ---------------------------------------------------------------------------------------------- condition dropout


def test_with_null_replaces_exactly_the_given_rows() -> None:
    hidden, mask = torch.randn(3, 4, 5), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    extras = {"lengths": torch.tensor([3, 2, 4])}
    null = torch.randn(5)
    out = Conditioning(hidden, mask, extras).with_null(null, torch.tensor([False, True, False]))
    for kept in (0, 2):
        assert torch.equal(out.hidden[kept], hidden[kept]) and torch.equal(out.mask[kept], mask[kept])
    assert torch.equal(out.hidden[1, 0], null) and torch.equal(out.hidden[1, 1:], torch.zeros(3, 5))
    assert out.mask[1].tolist() == [True, False, False, False]
    assert out.extras is extras  # extras are kept as they are


def test_drop_condition_draws_from_the_reseeded_training_rng() -> None:
    cond = Conditioning(torch.randn(64, 4, 5), torch.ones(64, 4, dtype=torch.bool))
    null = torch.randn(5)

    def dropped(out: Conditioning) -> Tensor:
        return ~out.mask[:, 1]

    state = torch.get_rng_state()
    assert drop_condition(cond, null, 0.0) is cond and drop_condition(cond, None, 0.5) is cond
    assert torch.equal(torch.get_rng_state(), state)  # p = 0: no draw, so recipes' pinned losses cannot move
    assert dropped(drop_condition(cond, null, 1.0)).all()
    torch.manual_seed(3)
    out = drop_condition(cond, null, 0.3)
    torch.manual_seed(3)
    expected = torch.rand(64) < 0.3  # the same draw: a resumed run (reseeded per batch) drops the same rows
    assert torch.equal(dropped(out), expected) and 0 < int(expected.sum()) < 64
    assert torch.equal(out.hidden[expected, 0], null.expand(int(expected.sum()), 5))
    assert torch.equal(out.hidden[~expected], cond.hidden[~expected])


@pytest.mark.parametrize("family", FAMILIES)
def test_null_parameter_exists_iff_dropout_and_gets_gradients(tok: Any, batch: Any, family: str) -> None:
    plain = FAMILIES[family](tok)
    assert plain.null_condition is None and not any("null_condition" in key for key in plain.state_dict())
    module = FAMILIES[family](tok, condition_dropout=1.0)
    assert module.null_condition.shape == (32,) and "null_condition" in module.state_dict()
    module.train()
    loss = module.compute_losses(batch)[0]
    loss.backward()
    assert module.null_condition.grad is not None and module.null_condition.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="condition_dropout"):
        FAMILIES[family](tok, condition_dropout=1.5)


@pytest.mark.parametrize("family", FAMILIES)
def test_length_predictor_reads_the_real_source(tok: Any, batch: Any, family: str) -> None:
    length = functools.partial(LengthPredictor, max_offset=8)
    if family == "continuous":
        terms = [X0MSE(), RoundingNLL(), PriorLoss(), LengthNLL()]
        module = continuous(tok, 1.0, denoiser=ENC_DEC, length_predictor=length, loss_terms=terms)
    else:
        module = discrete(tok, 1.0, length_predictor=length, loss_terms=[*discrete(tok).loss_terms, LengthNLL()])
    seen: list[Tensor] = []
    module.length_predictor.register_forward_pre_hook(lambda _, args: seen.append(args[0].mask.clone()))
    module.train()
    module.compute_losses(batch)
    assert torch.equal(seen[0], batch.src_mask)


def test_validation_loss_does_not_drop(tok: Any, batch: Any) -> None:
    module = continuous(tok, 1.0).eval()
    torch.manual_seed(0)
    a = module.compute_losses(batch)[0]
    with torch.no_grad():
        module.null_condition.add_(1.0)  # would change the loss if any row were dropped
    torch.manual_seed(0)
    assert torch.equal(a, module.compute_losses(batch)[0])


# ---------------------------------------------------------------------------------------------- classifier-free


class StubDenoiser:
    """x0 = z_t + mean of the source states at the real positions (a stand-in whose output depends on ``cond``)."""

    latent_dim = 4
    self_conditioning = False

    def __init__(self) -> None:
        self.rows: list[int] = []

    def __call__(self, z_t: Tensor, t: Tensor, cond: Conditioning, tgt_mask: Tensor | None = None, self_cond: Tensor | None = None) -> Tensor:
        self.rows.append(z_t.shape[0])
        m = cond.mask[..., None].to(z_t.dtype)
        return z_t + ((cond.hidden * m).sum(1) / m.sum(1))[:, None]


def test_guided_x0_is_the_hand_formula() -> None:
    stub = StubDenoiser()
    cond = Conditioning(torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    null, z, t = torch.randn(4), torch.randn(2, 5, 4), torch.tensor([7, 7])
    conditional, unconditional = stub(z, t, cond), stub(z, t, null_like(cond, null))
    stub.rows.clear()
    guided = ClassifierFreeGuidance(2.5).guide_latents(stub, null)
    assert torch.allclose(guided(z, t, cond), unconditional + 2.5 * (conditional - unconditional), atol=1e-6)
    assert stub.rows == [4]  # one batched call on [cond; null]
    assert guided.latent_dim == 4 and guided.self_conditioning is False  # the samplers' other reads: the denoiser's


@pytest.mark.parametrize("denoiser", [TOKEN_ENC_DEC, TOKEN_PREFIX], ids=["encoder_decoder", "prefix"])
def test_discrete_guidance_on_hidden_states_equals_guidance_on_logits(tok: Any, batch: Any, denoiser: Any) -> None:
    module = with_null_state(discrete(tok, 0.1, denoiser=denoiser))
    cond = module.denoiser.encode(batch.src_ids, batch.src_mask)
    x_t = torch.randint(0, module.vocab_size, (len(batch), 6)).masked_fill(torch.rand(len(batch), 6) < 0.5, module.denoiser.mask_id)
    t = torch.full((len(batch),), 0.5)
    guided = ClassifierFreeGuidance(3.0).guide_tokens(module.denoiser, module.null_condition)
    with torch.no_grad():
        conditional = module.denoiser(x_t, t, cond)
        unconditional = module.denoiser(x_t, t, null_like(cond, module.null_condition))
        logits = guided(x_t, t, cond)
        from_hidden = guided.output_logits(guided.hidden_states(x_t, t, cond))
    assert torch.allclose(logits, unconditional + 3.0 * (conditional - unconditional), atol=1e-5)
    assert torch.allclose(from_hidden, logits, atol=1e-4)  # the head is affine: E h + b
    assert guided.mask_id == module.denoiser.mask_id and guided.vocab_size == module.vocab_size


@pytest.mark.parametrize("family", FAMILIES)
def test_scale_one_is_plain_decoding_bit_exactly(tok: Any, batch: Any, family: str) -> None:
    module = with_null_state(FAMILIES[family](tok, 0.1))
    cfg = ClassifierFreeGuidance(1.0)
    guide = cfg.guide_latents if family == "continuous" else cfg.guide_tokens
    assert guide(module.denoiser, module.null_condition) is module.denoiser  # no second branch at all
    plain = decode_batch(module, batch, seed=0)
    guided = decode_batch(module, batch, module.decoding.replace(guidance=cfg), seed=0)
    assert guided.rows == plain.rows and guided.nfe == plain.nfe == 3


def test_scale_zero_is_decoding_with_the_null_condition_continuous(tok: Any, batch: Any) -> None:
    module = with_null_state(continuous(tok, 0.1))
    cond = module.denoiser.encode(batch.src_ids, batch.src_mask)
    sampler, length = DDIMSampler(steps=3, eta=1.0), 8
    guided = ClassifierFreeGuidance(0.0).guide_latents(module.denoiser, module.null_condition)
    a = sampler.sample(guided, module.schedule, cond, length, None, torch.Generator().manual_seed(1))
    b = sampler.sample(module.denoiser, module.schedule, null_like(cond, module.null_condition), length, None, torch.Generator().manual_seed(1))
    assert torch.equal(a.latents, b.latents) and torch.equal(a.token_ids, b.token_ids)


@pytest.mark.parametrize("sampler", [MaskPredictSampler(steps=3), DiscreteAncestralSampler(steps=3, temperature=1.0)], ids=["mask_predict", "ancestral"])
def test_scale_zero_is_decoding_with_the_null_condition_discrete(tok: Any, batch: Any, sampler: Any) -> None:
    module = with_null_state(discrete(tok, 0.1))
    cond = module.denoiser.encode(batch.src_ids, batch.src_mask)
    guided = ClassifierFreeGuidance(0.0).guide_tokens(module.denoiser, module.null_condition)
    null = null_like(cond, module.null_condition)
    a = sampler.sample(guided, module.schedule, module.corruption, cond, 8, None, torch.Generator().manual_seed(1))
    b = sampler.sample(module.denoiser, module.schedule, module.corruption, null, 8, None, torch.Generator().manual_seed(1))
    assert torch.equal(a.token_ids, b.token_ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_guidance_doubles_the_nfe_everywhere(tok: Any, batch: Any, family: str) -> None:
    module = with_null_state(FAMILIES[family](tok, 0.1))
    decoding = module.check_decoding(module.decoding.replace(guidance=ClassifierFreeGuidance(2.0)))
    assert decoding.nfe == 2 * module.check_decoding(module.decoding).nfe == 6
    assert "classifier-free guidance w=2, " in module.decoding_settings(decoding) and "NFE 6 per candidate" in decoding.describe()
    decoded = decode_batch(module, batch, decoding, seed=0)
    assert decoded.nfe == 6 and len(decoded.rows) == len(batch)
    generation = module.generate(batch.src_ids, batch.src_mask, decoding=decoding)
    assert generation.nfe == 6 and generation.calls_per_sentence == 6
    assert module.decoding.guidance is None  # the model's own decoding is unchanged


def test_predict_positions_under_guidance_matches_guided_logits(tok: Any, batch: Any) -> None:
    module = with_null_state(discrete(tok, 0.1))
    cond = module.denoiser.encode(batch.src_ids, batch.src_mask)
    guided = ClassifierFreeGuidance(2.0).guide_tokens(module.denoiser, module.null_condition)
    x_t = torch.full((len(batch), 6), module.denoiser.mask_id)
    t, need = torch.ones(len(batch)), torch.ones(len(batch), 6, dtype=torch.bool)
    with torch.no_grad():
        ids, _ = predict_positions(guided, x_t, t, cond, None, need, 0.0)
        assert torch.equal(ids, guided(x_t, t, cond).argmax(-1))


@pytest.mark.parametrize("family", FAMILIES)
def test_guidance_without_null_condition_is_a_clear_error(tok: Any, family: str) -> None:
    module = FAMILIES[family](tok)  # condition_dropout 0: no null condition
    with pytest.raises(DecodingError, match="condition_dropout > 0"):
        module.check_decoding(module.decoding.replace(guidance=ClassifierFreeGuidance(2.0)))
    with pytest.raises(DecodingError, match="condition_dropout > 0"):
        FAMILIES[family](tok, guidance=ClassifierFreeGuidance(2.0))


def test_classifier_guidance_is_continuous_only(tok: Any) -> None:
    module = discrete(tok, 0.1)
    with pytest.raises(DecodingError, match="continuous"):
        module.check_decoding(module.decoding.replace(guidance=ClassifierGuidance(KeywordScorer([5]), 1.0)))
    with pytest.raises(ValueError, match="scale"):
        ClassifierFreeGuidance(-1.0)


# ---------------------------------------------------------------------------------------------- classifier guidance


def test_classifier_guidance_steps_along_the_scorer_gradient(tok: Any, batch: Any) -> None:
    module = continuous(tok).eval()
    scorer = KeywordScorer([7, 9])
    cond = module.denoiser.encode(batch.src_ids, batch.src_mask)
    z, t = torch.randn(len(batch), 6, 16), torch.full((len(batch),), 20)
    mask = torch.ones(len(batch), 6, dtype=torch.bool)
    mask[0, 4:] = False
    with torch.no_grad():
        x0 = module.denoiser(z, t, cond, mask)
        grad = score_gradient(scorer, x0, module.denoiser, mask)
        guided = ClassifierGuidance(scorer, 0.5).guide_latents(module.denoiser, None)(z, t, cond, mask)
        # finite differences: d/de score(x0 + e v) = <grad, v> for each row
        v, eps = torch.randn_like(x0), 1e-2
        fd = (scorer(x0 + eps * v, module.denoiser, mask) - scorer(x0 - eps * v, module.denoiser, mask)) / (2 * eps)
    assert torch.allclose(guided, x0 + 0.5 * grad, atol=1e-6)
    assert torch.allclose(fd, (grad * v).sum(dim=(1, 2)), rtol=2e-2, atol=1e-3)
    assert torch.equal(grad[0, 4:], torch.zeros(2, 16))  # positions that do not exist are not pushed


def test_keyword_guidance_raises_the_keyword_probability(tok: Any, batch: Any) -> None:
    module = continuous(tok).eval()
    keyword = 42
    scorer = KeywordScorer([keyword])
    cond = module.denoiser.encode(batch.src_ids, batch.src_mask)
    sampler = DDIMSampler(steps=5)

    @torch.no_grad()
    def keyword_stats(denoiser: Any) -> tuple[float, int]:
        out = sampler.sample(denoiser, module.schedule, cond, 8, None, torch.Generator().manual_seed(0))
        prob = torch.softmax(module.denoiser.logits(out.latents), -1)[..., keyword].mean()
        return float(prob), int((out.token_ids == keyword).sum())

    plain_prob, plain_count = keyword_stats(module.denoiser)
    guided_prob, guided_count = keyword_stats(ClassifierGuidance(scorer, 20.0).guide_latents(module.denoiser, None))
    assert guided_prob > 2 * plain_prob and guided_count > plain_count
    decoding = module.decoding.replace(guidance=ClassifierGuidance(scorer, 20.0))
    assert decoding.nfe == 3 and "classifier guidance KeywordScorer(token_ids=[42]) scale=20" in decoding.describe()
    assert len(decode_batch(module, batch, decoding).rows) == len(batch)  # through the one decoding path


def test_classifier_guidance_works_under_inference_mode(tok: Any, batch: Any) -> None:
    """Lightning's validate / predict decode under ``torch.inference_mode``."""
    module = continuous(tok).eval()
    decoding = module.decoding.replace(guidance=ClassifierGuidance(KeywordScorer([42]), 5.0))
    with torch.inference_mode():
        decoded = decode_batch(module, batch, decoding)
    assert len(decoded.rows) == len(batch)


# ---------------------------------------------------------------------------------------------- CLI


def test_fit_with_condition_dropout_then_guided_decoding_from_the_cli(
    tmp_path: Path, tiny_overrides: Any, run_cli: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = RECIPES_DIR / "diffuseq" / "multi30k_en_de.yaml"
    cli = run_cli(["fit", "-c", str(recipe), *tiny_overrides(tmp_path, recipe=recipe), "--model.condition_dropout", "0.2"])
    assert cli.model.condition_dropout == 0.2 and cli.model.null_condition.shape == (32,)
    (ckpt,) = tmp_path.rglob("last.ckpt")
    loaded = DiffusionLM.load_from_checkpoint(ckpt)  # strict: the null parameter round-trips
    assert torch.equal(loaded.null_condition, cli.model.null_condition.detach())
    assert torch.equal(torch.load(ckpt, weights_only=True)["state_dict"]["null_condition"], loaded.null_condition.detach())

    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("Tom is here.\nI know it.\n"))
    run_cli(["generate", str(ckpt), "--guidance", "2", "--steps", "2", "--sampler", "DDIMSampler"])
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2
    assert "classifier-free guidance w=2" in captured.err and "NFE: 4 network evaluations per candidate" in captured.err

    validated = run_cli([
        "validate", "-c", str(recipe), *tiny_overrides(tmp_path / "validate", recipe=recipe), "--ckpt_path", str(ckpt),
        "--decoding.guidance", "ClassifierFreeGuidance", "--decoding.guidance.scale", "1.5",
    ])  # fmt: skip
    report = validated.model.last_report
    assert "classifier-free guidance w=1.5" in report.settings and "NFE 6 per candidate" in report.settings


def test_generate_guidance_needs_a_model_trained_with_condition_dropout(
    tmp_path: Path, tiny_overrides: Any, run_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = RECIPES_DIR / "diffuseq" / "multi30k_en_de.yaml"
    run_cli(["fit", "-c", str(recipe), *tiny_overrides(tmp_path, recipe=recipe, max_steps=1, val_check_interval=1)])
    (ckpt,) = tmp_path.rglob("last.ckpt")
    with pytest.raises(SystemExit, match="condition_dropout > 0"):
        run_cli(["generate", str(ckpt), "--guidance", "2", "--text+=Tom is here."])
