"""CDCD (Dieleman et al. 2022): score interpolation, cross-entropy on the denoiser's logits, time warping, and a
tiny model that trains and decodes with DDIM through DiffusionLM."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning import Trainer

from lightning_diffusion import DiffusionLM
from lightning_diffusion.data import tokenizer_fingerprint
from lightning_diffusion.denoisers import DenoiserOutput, EncoderDecoderDenoiser, ScoreInterpolationDenoiser
from lightning_diffusion.length import LengthPredictor
from lightning_diffusion.losses import LengthNLL, ScoreInterpolationCE
from lightning_diffusion.preconditioning import SkipPreconditioning
from lightning_diffusion.samplers import DDIMSampler
from lightning_diffusion.schedules import SqrtSchedule
from lightning_diffusion.timesteps import TimeWarpingTimestepSampler
from lightning_diffusion.types import LossInputs, Seq2SeqBatch

TINY = dict(
    latent_dim=16, hidden_dim=32, encoder_layers=1, decoder_layers=1, num_heads=2, ffn_dim=64, dropout=0.0
)
V = 12


def tiny_denoiser(vocab_size: int = V, **kwargs: Any) -> ScoreInterpolationDenoiser:
    torch.manual_seed(0)
    return ScoreInterpolationDenoiser(vocab_size, **{**TINY, "max_positions": 64, **kwargs})


def noisy_inputs(denoiser: ScoreInterpolationDenoiser, b: int = 2, length: int = 5) -> tuple[Any, ...]:
    cond = denoiser.encode(torch.randint(0, V, (b, 4)), torch.ones(b, 4, dtype=torch.bool))
    return torch.randn(b, length, denoiser.latent_dim), torch.randint(1, 50, (b,)), cond


# ---------------------------------------------------------------------------------------------- score interpolation


def test_one_hot_prediction_interpolates_to_exactly_that_embedding_row() -> None:
    denoiser = tiny_denoiser()
    words = torch.tensor([[3, 0, 11], [7, 7, 1]])
    # -inf everywhere but the word: the softmax is exactly one-hot
    logits = torch.full((2, 3, V), float("-inf")).scatter(-1, words[..., None], 0.0)
    x0 = denoiser.interpolate(logits)
    assert x0.shape == (2, 3, denoiser.latent_dim)
    assert torch.equal(x0, denoiser.embedding_table()[words])
    assert torch.equal(x0, denoiser.embed(words))


def test_x0_is_a_convex_combination_of_the_embeddings() -> None:
    denoiser = tiny_denoiser()
    table = denoiser.embedding_table()
    logits = 3.0 * torch.randn(4, 6, V)
    x0 = denoiser.interpolate(logits)
    torch.testing.assert_close(x0, torch.einsum("blv,vd->bld", logits.softmax(-1), table))
    # inside the hull: along any direction, no further out than the most extreme embedding row
    directions = torch.randn(64, denoiser.latent_dim)
    projected, rows = x0 @ directions.T, table @ directions.T  # [4, 6, 64], [V, 64]
    assert bool(
        (projected <= rows.max(0).values + 1e-5).all() and (projected >= rows.min(0).values - 1e-5).all()
    )


def test_embeddings_are_l2_normalised_to_sqrt_d_and_the_inputs_have_unit_variance() -> None:
    denoiser = tiny_denoiser()
    norms = denoiser.embedding_table().norm(dim=-1)
    torch.testing.assert_close(norms, torch.full((V,), math.sqrt(denoiser.latent_dim)))
    # so the VP input sqrt(abar) e + sqrt(1 - abar) eps has unit RMS per component: CDCD's z / sqrt(sigma^2 + 1)
    z0 = denoiser.embed(torch.randint(0, V, (256, 8)))
    abar = 0.3
    z_t = math.sqrt(abar) * z0 + math.sqrt(1 - abar) * torch.randn_like(z0)
    assert z_t.pow(2).mean().sqrt().item() == pytest.approx(1.0, abs=0.02)
    plain = tiny_denoiser(normalize_embeddings=False)
    assert not torch.allclose(plain.embedding_table().norm(dim=-1), norms)


def test_predict_returns_the_logits_it_interpolates_and_forward_the_same_x0() -> None:
    denoiser = tiny_denoiser().eval()
    z_t, t, cond = noisy_inputs(denoiser)
    out = denoiser.predict(z_t, t, cond)
    assert isinstance(out, DenoiserOutput) and out.logits is not None
    assert out.logits.shape == (2, 5, V) and out.x0.shape == (2, 5, denoiser.latent_dim)
    torch.testing.assert_close(out.x0, denoiser.interpolate(out.logits))
    torch.testing.assert_close(denoiser(z_t, t, cond), out.x0)
    assert not hasattr(denoiser, "output_proj")  # no idle latent head


def test_latent_denoisers_predict_x0_without_logits_through_their_forward() -> None:
    torch.manual_seed(0)
    denoiser = EncoderDecoderDenoiser(V, **TINY, max_positions=64).eval()
    cond = denoiser.encode(torch.randint(0, V, (2, 4)), torch.ones(2, 4, dtype=torch.bool))
    z_t, t = torch.randn(2, 5, 16), torch.tensor([3, 9])
    out = denoiser.predict(z_t, t, cond)
    assert out.logits is None
    torch.testing.assert_close(out.x0, denoiser(z_t, t, cond))


# ---------------------------------------------------------------------------------------------- cross-entropy


def loss_inputs(logits: torch.Tensor | None, target: torch.Tensor, mask: torch.Tensor) -> LossInputs:
    b, length = target.shape
    return LossInputs(
        z0=torch.zeros(b, length, 2),
        x0_hat=torch.full((b, length, 2), 1e6),  # nonsense: the term must not look at it
        target_ids=target,
        mask=mask,
        t=torch.ones(b, dtype=torch.long),
        alpha_bar_final=torch.zeros(b, length),
        logits=lambda z: torch.zeros(*z.shape[:-1], 3),
        prediction_logits=logits,
    )


def test_score_interpolation_ce_hand_computed() -> None:
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, -5.0, 0.0]]])
    target = torch.tensor([[0, 2, 1]])
    mask = torch.tensor([[True, True, False]])
    lse = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    expected = ((lse - 1.0) + math.log(3.0)) / 2  # the masked position does not count
    term = ScoreInterpolationCE()
    assert term.name == "ce" and term.weight == 1.0
    out = term(loss_inputs(logits, target, mask))
    assert out.shape == (1,)
    assert out.item() == pytest.approx(expected, rel=1e-6)
    smoothed = ScoreInterpolationCE(label_smoothing=0.1)(loss_inputs(logits, target, mask))
    ref = F.cross_entropy(logits[0, :2], target[0, :2], label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(ref.item(), rel=1e-6)


def test_score_interpolation_ce_needs_the_denoisers_logits() -> None:
    with pytest.raises(ValueError, match="ScoreInterpolationDenoiser"):
        ScoreInterpolationCE()(
            loss_inputs(None, torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))
        )


# ---------------------------------------------------------------------------------------------- time warping


def fill(sampler: TimeWarpingTimestepSampler, loss_of_step: Any, times: int) -> None:
    steps = torch.arange(1, sampler.num_steps + 1)
    for _ in range(times):
        sampler.update(steps, loss_of_step(steps.double()))


def kinked(steps: torch.Tensor) -> torch.Tensor:
    """Flat zero up to step 50, then rising by 1 per step: ``max(0, t - 50.5)``."""
    return (steps - 50.5).clamp_min(0.0)


def test_time_warping_is_uniform_with_unit_weights_before_warm_up() -> None:
    sampler = TimeWarpingTimestepSampler(100, bins=10, min_count=25)  # each fill: 10 losses per bin
    uniform = torch.full((100,), 0.01)
    fill(sampler, kinked, times=2)
    assert not sampler.warmed_up
    torch.testing.assert_close(sampler.probabilities(), uniform)
    _, weights = sampler.sample(32, torch.device("cpu"), torch.Generator().manual_seed(0))
    torch.testing.assert_close(weights, torch.ones(32))
    sampler.update(torch.arange(1, 91), kinked(torch.arange(1, 91).double()))  # the last bin is still short
    assert not sampler.warmed_up
    fill(sampler, kinked, times=1)
    assert sampler.warmed_up and not torch.allclose(sampler.probabilities(), uniform)


def test_time_warping_density_is_dF_dt_of_the_interpolated_fit_hand_computed() -> None:
    """T = 100 in 10 bins (centres 5.5, 15.5, ..., 95.5). The loss ``max(0, t - 50.5)`` has bin means 0 up to
    centre 45.5 and ``c - 50.5`` above, so F rises with slope 1/2 from 45.5 to 55.5 and slope 1 up to 95.5: a total
    rise of 45, flat (floor only) below 45.5 and above 95.5."""
    u = 0.01
    sampler = TimeWarpingTimestepSampler(100, bins=10, min_count=1, uniform_prob=u)
    fill(sampler, kinked, times=1)
    torch.testing.assert_close(sampler.bin_centres(), torch.arange(5.5, 100, 10, dtype=torch.float64))
    p = sampler.probabilities().double()
    floor = u / 100
    steps = torch.arange(1, 101)
    expect = functools.partial(torch.testing.assert_close, rtol=1e-5, atol=0.0)  # probabilities are float32
    expect(p[steps <= 45], torch.full((45,), floor, dtype=torch.float64))
    expect(p[steps >= 96], torch.full((5,), floor, dtype=torch.float64))
    expect(
        p[(steps >= 47) & (steps <= 55)], torch.full((9,), (1 - u) * 0.5 / 45 + floor, dtype=torch.float64)
    )
    expect(p[(steps >= 57) & (steps <= 95)], torch.full((39,), (1 - u) / 45 + floor, dtype=torch.float64))
    assert p.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("curve", ["kinked", "noisy", "decreasing"])
def test_time_warping_cdf_is_monotone_and_normalised(curve: str) -> None:
    torch.manual_seed(0)
    loss = {
        "kinked": kinked,
        "noisy": lambda s: (s / 200).sqrt() + 0.3 * torch.randn(s.shape, dtype=torch.float64),
        "decreasing": lambda s: 1.0 - s / 200,
    }[curve]
    sampler = TimeWarpingTimestepSampler(200, bins=20, min_count=5)
    fill(sampler, loss, times=5)
    fitted = sampler.fitted_loss()
    assert bool((fitted[1:] >= fitted[:-1]).all())  # isotonic: never decreasing in t
    cdf = sampler.cdf()
    assert cdf.shape == (200,) and bool((cdf[1:] >= cdf[:-1]).all())
    assert cdf[-1].item() == pytest.approx(1.0) and cdf[0].item() > 0
    if curve == "decreasing":  # pooled into one flat fit: nothing to warp
        torch.testing.assert_close(sampler.probabilities(), torch.full((200,), 1 / 200))


def test_time_warping_samples_follow_dF_dt() -> None:
    """Chi-square of 40,000 draws in ten groups of ten steps against the warped probabilities (9 degrees of
    freedom: 27.88 is the 0.1% critical value)."""
    sampler = TimeWarpingTimestepSampler(100, bins=10, min_count=1, uniform_prob=0.05)
    fill(sampler, kinked, times=1)
    n = 40_000
    t, _ = sampler.sample(n, torch.device("cpu"), torch.Generator().manual_seed(0))
    observed = torch.bincount((t - 1) // 10, minlength=10).double()
    expected = n * sampler.probabilities().double().reshape(10, 10).sum(-1)
    assert bool((expected >= 5).all())
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 27.88, (chi2, observed.tolist(), expected.tolist())
    assert observed[:4].sum() < observed[6:].sum() / 20  # the flat part of the loss is rarely trained


def test_time_warping_weights_are_one_as_cdcd_or_inverse_T_p_when_reweighting() -> None:
    for reweight in (False, True):
        sampler = TimeWarpingTimestepSampler(100, bins=10, min_count=1, reweight=reweight)
        fill(sampler, kinked, times=1)
        t, weights = sampler.sample(256, torch.device("cpu"), torch.Generator().manual_seed(0))
        expected = 1.0 / (100 * sampler.probabilities()[t - 1]) if reweight else torch.ones(256)
        torch.testing.assert_close(weights, expected)


def test_time_warping_running_means_then_exponential_forgetting() -> None:
    sampler = TimeWarpingTimestepSampler(4, bins=2, decay=0.5, min_count=1)
    sampler.update(torch.tensor([1, 2, 3]), torch.tensor([1.0, 3.0, 10.0]))  # bins: steps {1, 2} and {3, 4}
    torch.testing.assert_close(sampler.loss_mean, torch.tensor([2.0, 10.0], dtype=torch.float64))
    torch.testing.assert_close(sampler.loss_count, torch.tensor([2, 1]))
    # bin 0: 4 observations, one new: rate max(1/3, 1 - 0.5) = 0.5; bin 1 unchanged
    sampler.update(torch.tensor([2]), torch.tensor([4.0]))
    torch.testing.assert_close(sampler.loss_mean, torch.tensor([3.0, 10.0], dtype=torch.float64))


def test_time_warping_state_round_trips_a_state_dict() -> None:
    sampler = TimeWarpingTimestepSampler(100, bins=10, min_count=2)
    fill(sampler, kinked, times=3)
    state = sampler.state_dict()
    assert set(state) == {"loss_mean", "loss_count"}
    restored = TimeWarpingTimestepSampler(100, bins=10, min_count=2)
    restored.load_state_dict(state)
    assert restored.warmed_up
    torch.testing.assert_close(restored.probabilities(), sampler.probabilities())
    assert TimeWarpingTimestepSampler.learns  # the module gathers (t, loss) over ranks before update


def test_time_warping_bad_arguments() -> None:
    for kwargs in (dict(bins=0), dict(decay=0.0), dict(uniform_prob=1.5), dict(min_count=0)):
        with pytest.raises(ValueError, match="TimeWarpingTimestepSampler"):
            TimeWarpingTimestepSampler(100, **kwargs)
    assert TimeWarpingTimestepSampler(5, bins=100).bins == 5


# ---------------------------------------------------------------------------------------------- in DiffusionLM


def make_cdcd(tok: Any, **kwargs: Any) -> DiffusionLM:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        denoiser=functools.partial(
            ScoreInterpolationDenoiser, **TINY, max_positions=128, self_conditioning=True
        ),
        schedule=SqrtSchedule(100),
        loss_terms=[ScoreInterpolationCE(), LengthNLL()],
        timestep_sampler=functools.partial(TimeWarpingTimestepSampler, bins=10, min_count=2),
        length_predictor=functools.partial(LengthPredictor, max_offset=8),
        sampler=DDIMSampler(steps=3),
        self_condition_prob=0.5,
        vocab_size=len(tok),
    )
    options.update(kwargs)
    module = DiffusionLM(**options)
    module.attach_tokenizer(tok, tokenizer_fingerprint(tok))
    return module


def test_first_losses_are_pinned(tok: Any, batch: Seq2SeqBatch) -> None:
    """The CE starts near ln V (a near-uniform token head); changing the denoiser, the loss or the draw moves these."""
    module = make_cdcd(tok)
    torch.manual_seed(1)
    loss, terms, t, _ = module.compute_losses(batch)
    assert set(terms) == {"ce", "length"}
    assert terms["ce"].item() == pytest.approx(math.log(len(tok)), abs=0.5)
    assert terms["ce"].item() == pytest.approx(PINNED["ce"], rel=1e-4)
    assert loss.item() == pytest.approx(PINNED["loss"], rel=1e-4)


PINNED = {"ce": 5.7787, "loss": 6.0653}


def test_the_ce_term_gets_the_logits_the_denoiser_predicted(tok: Any, batch: Seq2SeqBatch) -> None:
    module = make_cdcd(tok, self_condition_prob=0.0)
    seen: list[DenoiserOutput] = []
    predict = module.denoiser.predict

    def recording(*args: Any) -> DenoiserOutput:
        seen.append(predict(*args))
        return seen[-1]

    module.denoiser.predict = recording  # type: ignore[method-assign]
    torch.manual_seed(1)
    _, terms, _, _ = module.compute_losses(batch)
    assert len(seen) == 1 and seen[0].logits is not None
    assert batch.tgt_ids is not None and batch.tgt_mask is not None
    nll = F.cross_entropy(seen[0].logits.transpose(1, 2), batch.tgt_ids, reduction="none")
    expected = ((nll * batch.tgt_mask).sum(-1) / batch.tgt_mask.sum(-1)).mean()
    torch.testing.assert_close(terms["ce"], expected)


def test_a_tiny_cdcd_model_trains_and_decodes_with_ddim(tiny_datamodule: Any, tmp_path: Path) -> None:
    tok = tiny_datamodule.tokenizer
    module = make_cdcd(tok)
    trainer = Trainer(
        max_steps=6, limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, use_distributed_sampler=False,
    )  # fmt: skip
    before = module.denoiser.token_head.weight.detach().clone()
    trainer.fit(module, tiny_datamodule)
    assert trainer.global_step == 6
    assert not torch.equal(before, module.denoiser.token_head.weight)
    assert int(module.timestep_sampler.loss_count.sum()) > 0  # time warping saw the training losses
    assert torch.isfinite(trainer.callback_metrics["train/ce"])
    module.eval()
    batch = next(iter(tiny_datamodule.val_dataloader()))
    out = module.generate(batch.src_ids, batch.src_mask, torch.Generator().manual_seed(0))
    assert len(out.texts) == len(batch) and all(isinstance(text, str) for text in out.texts)
    assert out.nfe == 3
    again = module.generate(batch.src_ids, batch.src_mask, torch.Generator().manual_seed(0))
    assert again.texts == out.texts


def test_skip_preconditioning_is_refused(tok: Any, batch: Seq2SeqBatch) -> None:
    module = make_cdcd(tok, preconditioning=SkipPreconditioning())
    with pytest.raises(ValueError, match="preconditioning"):
        module.compute_losses(batch)


def test_ce_with_a_latent_denoiser_is_an_error_naming_the_fix(tok: Any, batch: Seq2SeqBatch) -> None:
    module = make_cdcd(
        tok,
        denoiser=functools.partial(EncoderDecoderDenoiser, **TINY, max_positions=128),
        self_condition_prob=0.0,
    )
    with pytest.raises(ValueError, match="ScoreInterpolationDenoiser"):
        module.compute_losses(batch)
