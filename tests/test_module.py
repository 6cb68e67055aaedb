"""DiffusionLM in-process: losses, training canvas, self-conditioning, generate/MBR, decoding, NaN guard,
checkpoint fingerprint check and round trips; the PredictionWriter's ordering."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import RECIPES_DIR
from lightning import Trainer
from torch import Tensor

from lightning_diffusion import DiffusionLM
from lightning_diffusion.callbacks import PredictionWriter
from lightning_diffusion.data import (
    tokenizer_fingerprint,
)
from lightning_diffusion.denoisers import DenoiserOutput, DiffuSeqDenoiser
from lightning_diffusion.losses import X0MSE, LossTerm, PriorLoss, RoundingNLL
from lightning_diffusion.samplers import DDIMSampler
from lightning_diffusion.schedules import SqrtSchedule
from lightning_diffusion.types import LossInputs, Seq2SeqBatch

SAMPLER_STEPS = 3


def tiny_denoiser(**kwargs: Any) -> functools.partial[DiffuSeqDenoiser]:
    options: dict[str, Any] = dict(
        latent_dim=16, hidden_dim=32, num_layers=1, num_heads=2, ffn_dim=64, dropout=0.0, max_positions=128
    )
    options.update(kwargs)
    return functools.partial(DiffuSeqDenoiser, **options)


def make_module(tok: Any, denoiser: Any = None, **kwargs: Any) -> DiffusionLM:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(sampler=DDIMSampler(steps=SAMPLER_STEPS), vocab_size=len(tok))
    options.update(kwargs)
    module = DiffusionLM(denoiser=denoiser or tiny_denoiser(), schedule=SqrtSchedule(50), **options)
    module.attach_tokenizer(tok, tokenizer_fingerprint(tok))
    return module




class Recorder(LossTerm):
    """A zero loss term that keeps the inputs it saw."""

    default_name = "recorder"

    def __init__(self) -> None:
        super().__init__(weight=1.0)
        self.seen: list[LossInputs] = []

    def forward(self, inputs: LossInputs) -> Tensor:
        self.seen.append(inputs)
        return torch.zeros(inputs.target_ids.shape[0])


class NaNTerm(LossTerm):
    default_name = "exploding"

    def forward(self, inputs: LossInputs) -> Tensor:
        return inputs.x0_hat.sum(dim=(1, 2)) * float("nan")


# ---------------------------------------------------------------------------------------------- losses


def test_compute_losses_scalar_terms_and_grads(tok: Any, batch: Seq2SeqBatch) -> None:
    module = make_module(tok)
    loss, terms, t, per_example = module.compute_losses(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert (
        set(terms)
        == {X0MSE.default_name, RoundingNLL.default_name, PriorLoss.default_name}
        == {"mse", "rounding", "prior"}
    )
    assert all(v.ndim == 0 and torch.isfinite(v) for v in terms.values())
    assert t.shape == (len(batch),) and t.dtype == torch.long
    assert bool(((t >= 1) & (t <= module.schedule.num_steps)).all())
    assert per_example.shape == (len(batch),) and not per_example.requires_grad
    loss.backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    assert grads["denoiser.word_embedding.weight"] is not None
    assert all(
        g is not None and torch.isfinite(g).all()
        for name, g in grads.items()
        if "layers" in name or "proj" in name
    )
    assert any(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_training_canvas_covers_decoding_canvas_padded_with_pad(tok: Any, batch: Seq2SeqBatch) -> None:
    recorder = Recorder()
    module = make_module(tok, loss_terms=[X0MSE(), recorder])
    module.compute_losses(batch)
    target = recorder.seen[-1].target_ids
    assert batch.tgt_ids is not None
    width = batch.tgt_ids.shape[1]
    canvas = module.canvas_length(batch.src_mask)
    assert canvas > width, "test batch should need padding to reach the decoding canvas"
    assert target.shape == (len(batch), max(width, canvas))
    assert torch.equal(target[:, :width], batch.tgt_ids)
    assert bool((target[:, width:] == tok.pad_token_id).all())
    # DiffuSeq: the padded tail counts in the loss (the model learns to produce padding).
    assert bool(recorder.seen[-1].mask.all())


def test_training_canvas_keeps_long_targets(tok: Any, batch: Seq2SeqBatch) -> None:
    recorder = Recorder()
    module = make_module(tok, loss_terms=[X0MSE(), recorder], max_length=2)
    module.compute_losses(batch)
    assert batch.tgt_ids is not None
    assert torch.equal(recorder.seen[-1].target_ids, batch.tgt_ids)  # never truncated to the canvas


# ---------------------------------------------------------------------------------------------- self-conditioning


def test_self_condition_prob_needs_self_conditioning_denoiser(tok: Any) -> None:
    with pytest.raises(ValueError, match="self_conditioning"):
        make_module(tok, self_condition_prob=0.5)


def count_forwards(module: DiffusionLM) -> list[bool]:
    """Record, per denoiser forward call, whether gradients were enabled."""
    calls: list[bool] = []
    module.denoiser.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    return calls


def test_self_conditioning_runs_a_no_grad_first_pass(tok: Any, batch: Seq2SeqBatch) -> None:
    module = make_module(tok, denoiser=tiny_denoiser(self_conditioning=True), self_condition_prob=0.5)
    calls = count_forwards(module)
    loss, *_ = module.compute_losses(batch)
    assert calls == [False, True]
    loss.backward()

    plain = make_module(tok)
    plain_calls = count_forwards(plain)
    plain.compute_losses(batch)
    assert plain_calls == [True]


def test_self_conditioning_two_forwards_per_training_step(tiny_datamodule: Any, tmp_path: Path) -> None:
    tok = tiny_datamodule.tokenizer
    module = make_module(tok, denoiser=tiny_denoiser(self_conditioning=True), self_condition_prob=1.0)
    calls = count_forwards(module)
    trainer = Trainer(
        max_steps=2, limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, use_distributed_sampler=False,
    )  # fmt: skip
    trainer.fit(module, tiny_datamodule)
    assert trainer.global_step == 2
    assert calls == [False, True, False, True]


# ---------------------------------------------------------------------------------------------- generation


def test_generate_texts_nfe_candidates(tok: Any, batch: Seq2SeqBatch) -> None:
    module = make_module(tok).eval()
    out = module.generate(batch.src_ids, batch.src_mask, torch.Generator().manual_seed(0))
    assert len(out.texts) == len(batch) and all(isinstance(t, str) for t in out.texts)
    assert out.nfe == SAMPLER_STEPS
    assert out.candidates == module.noise_beam == 1
    assert out.calls_per_sentence == SAMPLER_STEPS
    again = module.generate(batch.src_ids, batch.src_mask, torch.Generator().manual_seed(0))
    assert again.texts == out.texts  # seeded decoding is reproducible


def test_generate_mbr_decodes_all_candidates_in_one_batch(
    tok: Any, batch: Seq2SeqBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 3
    module = make_module(tok, noise_beam=n).eval()
    sampler_rows: list[int] = []
    encode_calls: list[int] = []
    candidate_texts: list[list[str]] = []
    sample, encode, decode = module.sampler.sample, module.denoiser.encode, module.decode_ids

    def spy_sample(denoiser, schedule, cond, *args, **kwargs):
        sampler_rows.append(cond.hidden.shape[0])
        return sample(denoiser, schedule, cond, *args, **kwargs)

    def spy_encode(src_ids, src_mask):
        encode_calls.append(src_ids.shape[0])
        return encode(src_ids, src_mask)

    def spy_decode(token_ids, **kwargs):
        texts = decode(token_ids, **kwargs)
        candidate_texts.append(texts)
        return texts

    monkeypatch.setattr(module.sampler, "sample", spy_sample)
    monkeypatch.setattr(module.denoiser, "encode", spy_encode)
    monkeypatch.setattr(module, "decode_ids", spy_decode)
    b = len(batch)
    out = module.generate(batch.src_ids, batch.src_mask, torch.Generator().manual_seed(0))
    assert sampler_rows == [n * b]
    assert encode_calls == [b]  # the source is encoded once, not per candidate or per step
    assert out.candidates == n and out.nfe == SAMPLER_STEPS and out.calls_per_sentence == n * SAMPLER_STEPS
    assert len(out.texts) == b
    (texts,) = candidate_texts
    assert len(texts) == n * b
    for i, chosen in enumerate(out.texts):
        assert chosen in texts[i * n : (i + 1) * n]  # candidates of source i are adjacent


def test_decode_ids_cuts_at_first_eos_and_drops_specials(tok: Any) -> None:
    module = make_module(tok)
    hello = tok("Tom is here.", add_special_tokens=False)["input_ids"]
    other = tok("I have to go.", add_special_tokens=False)["input_ids"]
    pad, eos, bos, sep = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.sep_token_id
    rows = [
        [bos, *hello, sep, pad, eos, *other, eos],  # specials dropped, cut at the first EOS
        [*other, pad, pad],  # no EOS: everything but specials
        [eos, *hello],  # EOS first: empty
    ]
    width = max(map(len, rows))
    ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
    assert module.decode_ids(ids) == ["Tom is here.", "I have to go.", ""]


def test_decode_ids_needs_a_tokenizer(tok: Any) -> None:
    module = make_module(tok)
    module.tokenizer = None
    with pytest.raises(RuntimeError, match="tokenizer"):
        module.decode_ids(torch.zeros(1, 3, dtype=torch.long))


# ---------------------------------------------------------------------------------------------- guards


def test_nan_loss_raises_naming_step_and_term(tok: Any, batch: Seq2SeqBatch) -> None:
    module = make_module(tok, loss_terms=[X0MSE(), NaNTerm()])
    with pytest.raises(FloatingPointError, match=r"global step 0.*exploding"):
        module.training_step(batch, 0)


def test_nan_loss_raises_at_the_right_step(
    tok: Any, batch: Seq2SeqBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = make_module(tok)
    monkeypatch.setattr(type(module), "global_step", property(lambda self: 7))
    compute = module.compute_losses

    def nan_losses(b):
        loss, terms, t, per_example = compute(b)
        return loss * float("nan"), terms, t, per_example

    monkeypatch.setattr(module, "compute_losses", nan_losses)
    with pytest.raises(FloatingPointError, match=r"step 7 \(terms: total\)"):
        module.training_step(batch, 0)


def test_non_finite_gradient_stops_before_the_weights_change(tiny_datamodule: Any, tmp_path: Path) -> None:
    """Finite loss, overflowing backward pass (simulated by a gradient hook at the 3rd step): the run stops
    naming the step and the parameter, and the weights are those after step 2, never NaN."""
    module = make_module(tiny_datamodule.tokenizer)
    weight = module.denoiser.word_embedding.weight
    calls = {"n": 0}

    def overflow_on_third_call(grad: Tensor) -> Tensor:
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == 3 else grad

    weight.register_hook(overflow_on_third_call)
    trainer = Trainer(
        max_steps=5, limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, use_distributed_sampler=False,
    )  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"non-finite gradients at global step 2 .*denoiser\.word_embedding\.weight"):
        trainer.fit(module, tiny_datamodule)
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_on_load_checkpoint_rejects_other_tokenizer(tok: Any) -> None:
    module = make_module(tok)
    mine = tokenizer_fingerprint(tok)
    module.on_load_checkpoint({"lightning_diffusion": {"tokenizer_fingerprint": mine}})
    module.on_load_checkpoint({})  # old checkpoints without a fingerprint load
    with pytest.raises(ValueError, match="different tokenizer") as info:
        module.on_load_checkpoint({"lightning_diffusion": {"tokenizer_fingerprint": "f" * 64}})
    assert "ffffffffffff" in str(info.value) and mine[:12] in str(info.value)
    assert "tokenizer" in str(info.value)


# ---------------------------------------------------------------------------------------------- checkpoints


def assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_checkpoint_round_trip_programmatic(tiny_datamodule: Any, tmp_path: Path) -> None:
    torch.manual_seed(0)
    denoiser = tiny_denoiser()
    module = DiffusionLM(
        denoiser=denoiser, schedule=SqrtSchedule(50), sampler=DDIMSampler(steps=SAMPLER_STEPS),
        vocab_size=tiny_datamodule.vocab_size, noise_beam=2,
    )  # fmt: skip
    trainer = Trainer(
        max_steps=2, limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, use_distributed_sampler=False,
    )  # fmt: skip
    trainer.fit(module, tiny_datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    stored = torch.load(path, weights_only=False)
    assert stored["lightning_diffusion"]["tokenizer_fingerprint"] == tiny_datamodule.tokenizer_fingerprint

    loaded = DiffusionLM.load_from_checkpoint(path, denoiser=denoiser, schedule=SqrtSchedule(50))
    assert_same_state(loaded.state_dict(), module.state_dict())
    assert loaded.hparams["vocab_size"] == tiny_datamodule.vocab_size
    assert loaded.noise_beam == 2  # plain hyperparameters come back from the checkpoint

    # Decoding with the loaded weights matches the trained module (same sampler, same noise).
    loaded.decoding = loaded.decoding.replace(sampler=module.sampler)
    loaded.attach_tokenizer(tiny_datamodule.tokenizer, tiny_datamodule.tokenizer_fingerprint)
    module.eval()
    loaded.eval()
    batch = next(iter(tiny_datamodule.val_dataloader()))
    a = module.generate(batch.src_ids, batch.src_mask, torch.Generator().manual_seed(1))
    b = loaded.generate(batch.src_ids, batch.src_mask, torch.Generator().manual_seed(1))
    assert a.texts == b.texts


def test_cli_checkpoint_loads_without_arguments(tmp_path: Path, tiny_overrides, run_cli) -> None:
    recipe = RECIPES_DIR / "diffuseq" / "multi30k_en_de.yaml"
    cli = run_cli(["fit", "-c", str(recipe), *tiny_overrides(tmp_path, recipe=recipe)])
    (ckpt,) = tmp_path.rglob("last.ckpt")
    loaded = DiffusionLM.load_from_checkpoint(ckpt)  # the CLI stored the recipe's class_path config
    assert isinstance(loaded.denoiser, DiffuSeqDenoiser)
    assert loaded.denoiser.hidden_dim == 32 and len(loaded.denoiser.layers) == 1
    assert loaded.sampler.steps == 3
    assert type(loaded.schedule) is type(cli.model.schedule)
    assert_same_state(loaded.state_dict(), torch.load(ckpt, weights_only=False)["state_dict"])
    assert loaded.tokenizer is None  # tokenizer comes from <log_dir>/tokenizer or the data module
    assert (ckpt.parent.parent / "tokenizer" / "tokenizer.json").is_file()


# ---------------------------------------------------------------------------------------------- prediction writer


def test_prediction_writer_orders_and_dedupes(tmp_path: Path) -> None:
    def row(i: int, tag: str = "") -> dict[str, Any]:
        return {"index": i, "source": f"src {i}", "hypothesis": f"hyp {i}{tag}", "reference": f"ref {i}"}

    # Length-sorted batches come out of order; distributed padding repeats some examples.
    predictions = [[row(2), row(0)], [row(3), row(1)], [row(0, " again"), row(4)]]
    trainer = SimpleNamespace(world_size=1, is_global_zero=True, log_dir=str(tmp_path / "logs"))
    pl_module = SimpleNamespace(decoding_settings=lambda: "DDIM, NFE 3")
    writer = PredictionWriter()
    writer.write_on_epoch_end(trainer, pl_module, predictions, [])  # type: ignore[arg-type]
    path = tmp_path / "logs" / "predictions.jsonl"
    assert writer.written == path
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["source"] for r in rows] == [f"src {i}" for i in range(5)]
    assert all("index" not in r for r in rows)
    assert rows[1] == {"source": "src 1", "hypothesis": "hyp 1", "reference": "ref 1"}

    explicit = tmp_path / "out" / "preds.jsonl"
    PredictionWriter(output_file=str(explicit)).write_on_epoch_end(trainer, pl_module, predictions, [])  # type: ignore[arg-type]
    assert explicit.read_text(encoding="utf-8") == path.read_text(encoding="utf-8")


def test_prediction_writer_only_rank_zero_writes(tmp_path: Path) -> None:
    trainer = SimpleNamespace(world_size=1, is_global_zero=False, log_dir=str(tmp_path))
    writer = PredictionWriter()
    writer.write_on_epoch_end(
        trainer, SimpleNamespace(), [[{"index": 0, "source": "a", "hypothesis": "b"}]], []
    )  # type: ignore[arg-type]
    assert writer.written is None and not (tmp_path / "predictions.jsonl").exists()


def test_noisy_x_start_scores_the_embedding_plus_first_step_noise(tok: Any, batch: Seq2SeqBatch) -> None:
    """DiffuSeq's ``_get_x_start``: a denoiser that returns the clean embedding exactly has MSE 0 against ``Emb(y)``
    and ``1 - abar_1`` (the first step's noise variance) against ``Emb(y) + sqrt(1 - abar_1) eps``."""

    def oracle(module: DiffusionLM) -> None:
        def forward(z_t: Tensor, t: Tensor, cond: Any, tgt_mask: Any = None, self_cond: Any = None) -> Tensor:
            return module.denoiser.embed(module._pad_canvas(batch))

        module.denoiser.forward = forward  # type: ignore[method-assign]
        module.denoiser.predict = lambda *args, **kwargs: DenoiserOutput(x0=forward(*args))  # type: ignore[method-assign]

    clean = make_module(tok, loss_terms=[X0MSE()])
    oracle(clean)
    _, terms, _, _ = clean.compute_losses(batch)
    assert terms["mse"].item() == pytest.approx(0.0, abs=1e-7)

    noisy = make_module(tok, loss_terms=[X0MSE()], noisy_x_start=True)
    oracle(noisy)
    torch.manual_seed(0)
    _, terms, _, _ = noisy.compute_losses(batch)
    variance = 1.0 - noisy.schedule.alpha_bar(torch.ones(1, dtype=torch.long), 1).item()
    assert 0.1 < variance < 0.2  # sqrt schedule, T = 50: 1 - abar_1 = 1 - f(1) / f(0) with f(t) = 1 - sqrt(t / T + 1e-4)
    assert terms["mse"].item() == pytest.approx(variance, rel=0.15)  # a mean of ~1,000 squared N(0, variance) draws
