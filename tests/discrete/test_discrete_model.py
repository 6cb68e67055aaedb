"""DiscreteDiffusionLM in-process: the objective, pinned first losses, decoding paths, statistics, checkpoints."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning import Trainer

from lightning_diffusion import DiscreteDiffusionLM
from lightning_diffusion.data import tokenizer_fingerprint
from lightning_diffusion.decoding import DecodingError, decode_batch
from lightning_diffusion.discrete import (
    D3PMHybrid,
    DiscreteAncestralSampler,
    EncoderDecoderTokenDenoiser,
    MaskAndReplaceCorruption,
    MaskedDiffusionELBO,
    MaskPredictSampler,
    PrefixTokenDenoiser,
    ReweightedCrossEntropy,
    SpindleMasking,
    UniformCorruption,
)
from lightning_diffusion.discrete.model import stratified_times
from lightning_diffusion.length import LengthPredictor
from lightning_diffusion.losses import X0MSE, LengthNLL
from lightning_diffusion.samplers import DDIMSampler
from lightning_diffusion.selection import FirstCandidate, ModelScoreSelection

ENC_DEC = functools.partial(
    EncoderDecoderTokenDenoiser, hidden_dim=32, encoder_layers=1, decoder_layers=1, num_heads=2, ffn_dim=64, dropout=0.0, max_positions=128
)
PREFIX = functools.partial(PrefixTokenDenoiser, hidden_dim=32, num_layers=1, num_heads=2, ffn_dim=64, dropout=0.0, max_positions=256)


def make(tok: Any, **kwargs: Any) -> DiscreteDiffusionLM:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(denoiser=ENC_DEC, sampler=MaskPredictSampler(steps=3), vocab_size=len(tok))
    options.update(kwargs)
    module = DiscreteDiffusionLM(**options)
    module.attach_tokenizer(tok, tokenizer_fingerprint(tok))
    return module


def with_length(tok: Any, **kwargs: Any) -> DiscreteDiffusionLM:
    return make(
        tok,
        loss_terms=[ReweightedCrossEntropy(), LengthNLL()],
        length_predictor=functools.partial(LengthPredictor, max_offset=8),
        **kwargs,
    )


def test_stratified_times_cover_the_interval() -> None:
    t = stratified_times(8, 1e-3, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert t.min() >= 1e-3 and t.max() <= 1.0
    assert sorted(int(v * 8) for v in ((t - 1e-3) / (1 - 1e-3))) == list(range(8))  # one per stratum


def test_first_losses_are_pinned(tok: Any, batch: Any) -> None:
    """Changing the objective, the corruption draw or the network's initialisation changes these numbers."""
    torch.manual_seed(1)
    loss, terms = make(tok).compute_losses(batch)
    assert set(terms) == {"elbo"}
    torch.manual_seed(1)
    loss_len, terms_len = with_length(tok).compute_losses(batch)
    assert set(terms_len) == {"rdm", "length"}
    # ln(300) = 5.70 nats per token at initialisation, times the ELBO weight 1/t on the masked share.
    assert loss.item() == pytest.approx(PINNED["elbo"], rel=1e-4)
    assert loss_len.item() == pytest.approx(PINNED["rdm+length"], rel=1e-4)


PINNED = {"elbo": 6.4506, "rdm+length": 2.8822}


def test_every_corruption_and_loss_trains_a_step(tok: Any, batch: Any) -> None:
    for kwargs in (
        dict(corruption=UniformCorruption(), loss_terms=[ReweightedCrossEntropy()]),
        dict(corruption=MaskAndReplaceCorruption(0.2), loss_terms=[D3PMHybrid(num_steps=20)]),
        dict(loss_terms=[MaskedDiffusionELBO()], unroll_steps=2, denoiser=PREFIX),
    ):
        module = make(tok, **kwargs)
        loss, terms = module.compute_losses(batch)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in module.parameters())
        if kwargs.get("unroll_steps"):
            assert "unrolled" in terms and terms["unrolled"] > 0


def test_bad_combinations_are_errors(tok: Any) -> None:
    with pytest.raises(ValueError, match="absorbing-state ELBO"):
        make(tok, corruption=UniformCorruption())
    with pytest.raises(ValueError, match="continuous family"):
        make(tok, loss_terms=[X0MSE()])
    with pytest.raises(DecodingError, match="discrete sampler"):
        make(tok, sampler=DDIMSampler(steps=3))
    with pytest.raises(DecodingError, match="length predictor"):
        make(tok, length_beam=3)
    with pytest.raises(ValueError, match="no loss term trains it"):
        make(tok, length_predictor=functools.partial(LengthPredictor, max_offset=8))
    with pytest.raises(DecodingError, match="DiscreteAncestralSampler gives none"):
        with_length(tok, length_beam=2, selection=ModelScoreSelection(), sampler=DiscreteAncestralSampler(steps=3))


class RankedMaskPredict(MaskPredictSampler):
    """Mask-predict whose sequence scores are replaced by ``sign * row index``: a known ranking of the candidates."""

    def __init__(self, sign: float) -> None:
        super().__init__(steps=3)
        self.sign = sign

    def sample(self, *args: Any, **kwargs: Any) -> Any:
        out = super().sample(*args, **kwargs)
        out.scores = self.sign * torch.arange(out.token_ids.shape[0], dtype=torch.float32)
        return out


def test_model_score_selection_takes_the_candidate_the_sampler_scores_highest(tok: Any, batch: Any) -> None:
    """Length beam 3 in one length group (no re-ordering of rows): descending scores pick each source's first
    candidate, as FirstCandidate does; ascending scores pick another one for some source."""
    module = with_length(tok, length_beam=3)
    module.eval()
    natural = decode_batch(module, batch, module.decoding.replace(selection=ModelScoreSelection()), seed=0)
    assert len(natural.rows) == len(batch) and natural.candidates == 3
    first = decode_batch(module, batch, module.decoding.replace(selection=FirstCandidate()), seed=0)
    import lightning_diffusion.discrete.model as model_module

    one_group = lambda lengths: [torch.arange(len(lengths))]  # noqa: E731
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_module, "length_groups", one_group)
        down = decode_batch(module, batch, module.decoding.replace(sampler=RankedMaskPredict(-1.0), selection=ModelScoreSelection()), seed=0)
        up = decode_batch(module, batch, module.decoding.replace(sampler=RankedMaskPredict(1.0), selection=ModelScoreSelection()), seed=0)
    hyps = lambda out: [r["hypothesis"] for r in out.rows]  # noqa: E731
    assert hyps(down) == hyps(first)
    assert hyps(up) != hyps(first)


class LengthScoredMaskPredict(MaskPredictSampler):
    """Mask-predict whose sequence score is the row's own length: a score that identifies its row."""

    def sample(self, denoiser: Any, schedule: Any, corruption: Any, cond: Any, length: int, tgt_mask: Any = None, *args: Any, **kwargs: Any) -> Any:
        out = super().sample(denoiser, schedule, corruption, cond, length, tgt_mask, *args, **kwargs)
        out.scores = tgt_mask.sum(-1).float()
        return out


def test_candidate_scores_return_to_their_rows_after_length_groups(tok: Any, batch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Candidates are decoded in groups of similar length (rows re-ordered); each score must land on its own row."""
    import lightning_diffusion.discrete.model as model_module

    module = with_length(tok, length_beam=3)
    module.eval()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_choose, real_groups = model_module.choose_candidates, model_module.length_groups

    def capture(mod: Any, token_ids: torch.Tensor, layout: Any, decoding: Any, scores: Any = None) -> list[str]:
        seen.append((layout.tgt_mask.sum(-1).float(), scores))
        return real_choose(mod, token_ids, layout, decoding, scores)

    monkeypatch.setattr(model_module, "choose_candidates", capture)
    monkeypatch.setattr(model_module, "length_groups", lambda lengths: real_groups(lengths, 0))  # one group per length
    decoding = module.decoding.replace(sampler=LengthScoredMaskPredict(steps=3), selection=ModelScoreSelection())
    decode_batch(module, batch, decoding, seed=0)
    lengths, scores = seen[0]
    assert len(set(lengths.tolist())) > 1 and torch.equal(scores, lengths)


@pytest.mark.parametrize("length", [False, True], ids=["canvas", "length_predictor"])
def test_generate_through_the_one_decoding_path(tok: Any, batch: Any, length: bool) -> None:
    module = with_length(tok, length_beam=2, noise_beam=2) if length else make(tok, noise_beam=2)
    module.eval()
    decoded = decode_batch(module, batch, seed=0)
    again = decode_batch(module, batch, seed=0)
    assert [r["hypothesis"] for r in decoded.rows] == [r["hypothesis"] for r in again.rows]  # seeded
    assert decoded.candidates == (4 if length else 2) and decoded.nfe == 3
    other = module.decoding.replace(sampler=DiscreteAncestralSampler(steps=5))
    out = decode_batch(module, batch, other, seed=0)
    assert len(out.rows) == len(batch) and 1 <= out.nfe <= 5
    assert module.decoding.sampler.steps == 3  # the model's own decoding is unchanged
    assert "AbsorbingCorruption" in module.decoding_settings()


def test_length_groups_decode_what_one_canvas_decodes(tok: Any, batch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Candidates decoded in groups of similar length (each on its own shorter canvas) get the tokens they get on
    the batch's one canvas: the grouping only skips padding."""
    import lightning_diffusion.discrete.model as model_module

    module = with_length(tok, length_beam=3)
    module.eval()
    seen: list[int] = []
    real = model_module.length_groups

    def groups_with(overhead: int) -> Any:
        def split(lengths: torch.Tensor) -> list[torch.Tensor]:
            out = real(lengths, overhead)
            seen.append(len(out))
            return out

        return split

    monkeypatch.setattr(model_module, "length_groups", groups_with(10**9))
    one = decode_batch(module, batch, seed=0)
    monkeypatch.setattr(model_module, "length_groups", groups_with(0))
    many = decode_batch(module, batch, seed=0)
    assert seen[0] == 1 and seen[1] > 1  # the second run really split the batch
    assert [r["hypothesis"] for r in many.rows] == [r["hypothesis"] for r in one.rows]
    assert many.nfe == one.nfe == 3


def test_cross_attention_keys_are_projected_once_per_decoding(tok: Any, batch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """While decoding, the encoder-decoder denoiser projects the source's cross-attention keys/values once per
    conditioning tensor and reuses them at every step; the tokens are those of projecting at every step."""
    import copy
    import pickle

    from lightning_diffusion.denoisers.layers import MultiHeadAttention

    module = with_length(tok, length_beam=2)
    module.eval()
    calls: list[int] = []
    real = MultiHeadAttention.project_kv

    def counting(self: Any, context: torch.Tensor) -> Any:
        calls.append(context.shape[0])
        return real(self, context)

    monkeypatch.setattr(MultiHeadAttention, "project_kv", counting)
    memo = decode_batch(module, batch, seed=0)
    with_memo = len(calls)
    monkeypatch.setattr(type(module.denoiser), "_cross_keys_values", lambda self, cond: None)
    calls.clear()
    plain = decode_batch(module, batch, seed=0)
    assert [r["hypothesis"] for r in memo.rows] == [r["hypothesis"] for r in plain.rows]
    assert with_memo < len(calls)  # 3 steps: the plain run projects the source (and self-attention) at every call
    module.train()
    assert module.denoiser._cross_keys_values(module.denoiser.encode(batch.src_ids, batch.src_mask)) is None  # training untouched
    assert copy.deepcopy(module.denoiser)._cross_memo is None
    pickle.dumps(module.denoiser)  # the weak reference is not pickled


def test_spindle_is_fitted_on_the_training_targets_and_checkpointed(tok: Any, tiny_datamodule: Any, tmp_path: Path) -> None:
    module = make(tok, schedule=SpindleMasking(0.3), vocab_size=tiny_datamodule.vocab_size)
    trainer = Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, default_root_dir=tmp_path, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=tiny_datamodule)
    assert module.schedule.fitted and module.schedule.information.numel() == tiny_datamodule.vocab_size
    counts = tiny_datamodule.target_token_counts()
    assert int(counts[tiny_datamodule.eos_id]) >= len(tiny_datamodule.datasets["train"])
    path = tmp_path / "spindle.ckpt"
    trainer.save_checkpoint(path)
    loaded = DiscreteDiffusionLM.load_from_checkpoint(path, denoiser=ENC_DEC, sampler=MaskPredictSampler(steps=3), schedule=SpindleMasking(0.3))
    assert torch.equal(loaded.schedule.information, module.schedule.information)
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_masking_probe_scores_an_oracle_perfectly_and_a_fresh_model_poorly(tok: Any, batch: Any) -> None:
    from lightning_diffusion.discrete.probe import masking_probe

    module = with_length(tok)
    rows = masking_probe(module, [batch], times=[0.5, 1.0])
    assert [row.t for row in rows] == [0.5, 1.0]
    full = rows[-1]
    assert full.corrupted == int(batch.tgt_mask.sum())  # at t = 1 every real position is masked
    assert full.accuracy_corrupted < 0.2 and full.accuracy_all == full.accuracy_corrupted
    assert rows[0].accuracy_all > rows[0].accuracy_corrupted  # clean positions are carried over

    target = batch.tgt_ids
    module.denoiser.forward = lambda x_t, t, cond, mask=None: F.one_hot(target, module.vocab_size).float()  # oracle (the probe calls forward)
    assert all(row.accuracy_corrupted == 1.0 for row in masking_probe(module, [batch], times=[0.3, 1.0]))
