"""OutputVocabulary: the output head scores the training targets' ids only; the others have probability 0, get no
gradient from the head, and the ids travel with checkpoints. Training losses run the head over the kept ids alone
([N, V'], label smoothing spread over them) and equal the full head with -inf at the dropped ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import RECIPES_DIR, TinyData, fit_tiny
from tiny_continuous import VOCAB, make_batch, make_module

from lightning_diffusion import DiscreteDiffusionLM
from lightning_diffusion.autoregressive import AutoregressiveLM
from lightning_diffusion.autoregressive.model import TransformerSeq2Seq
from lightning_diffusion.discrete import (
    D3PMHybrid,
    EncoderDecoderTokenDenoiser,
    Glancing,
    NeighbourUnlikelihood,
    ReweightedCrossEntropy,
    UniformCorruption,
)
from lightning_diffusion.guidance import KeywordScorer
from lightning_diffusion.losses import X0MSE, AnchorNLL, LengthNLL, RoundingNLL
from lightning_diffusion.losses import NeighbourUnlikelihood as ContinuousNeighbourUnlikelihood
from lightning_diffusion.output_vocabulary import OutputVocabulary
from lightning_diffusion.pretrained import export_pretrained, load_pretrained
from lightning_diffusion.samplers import DDIMSampler
from lightning_diffusion.samplers.rounding import round_to_tokens


def capture_loss_inputs(module) -> dict:
    """Wrap the module's first loss term so that the inputs of its next call land in the returned dict."""
    captured = {}
    original = module.loss_terms[0].forward

    def spy(inputs):
        captured["inputs"] = inputs
        return original(inputs)

    module.loss_terms[0].forward = spy
    return captured


def fitted(counts: list[int], keep: tuple[int, ...] = (), min_count: int = 1) -> OutputVocabulary:
    vocabulary = OutputVocabulary(min_count=min_count)
    vocabulary.fit(torch.tensor(counts), keep)
    return vocabulary


def test_fit_keeps_the_ids_seen_min_count_times_and_the_given_specials() -> None:
    assert fitted([0, 3, 0, 1, 5, 0], keep=(2,)).ids.tolist() == [1, 2, 3, 4]
    assert fitted([0, 3, 0, 1, 5, 0], min_count=2).ids.tolist() == [1, 4]
    assert not OutputVocabulary().fitted


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: OutputVocabulary(min_count=0), "min_count"),
        (lambda: fitted([1, 2], keep=(2,)), "keep id 2"),
        (lambda: fitted([0, 1], min_count=2), r"no token id occurs 2\+ times"),
    ],
)
def test_bad_settings_are_refused(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_are_the_full_head_at_kept_ids_and_zero_probability_elsewhere(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    vocabulary = fitted([0, 3, 0, 1, 5, 0])
    weight, bias, hidden = torch.randn(6, 4, dtype=dtype), torch.randn(6, dtype=dtype), torch.randn(2, 3, 4, dtype=dtype)
    logits = vocabulary.logits(hidden, weight, bias)
    assert logits.shape == (2, 3, 6) and logits.dtype == dtype
    full = F.linear(hidden, weight, bias)
    torch.testing.assert_close(logits[..., [1, 3, 4]], full[..., [1, 3, 4]])
    probs = logits.float().softmax(-1)
    assert torch.all(probs[..., [0, 2, 5]] == 0.0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3))
    assert torch.all(logits[..., [0, 2, 5]] == float("-inf"))
    assert torch.isfinite(torch.special.xlogy(probs, probs)).all()  # entropies stay finite with xlogy


def test_dropped_rows_get_no_gradient_from_the_head_and_unfitted_scores_every_id() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 4, requires_grad=True)
    hidden = torch.randn(5, 4)
    fitted([0, 3, 0, 1, 5, 0]).logits(hidden, weight).log_softmax(-1)[:, 1].sum().backward()
    assert weight.grad is not None
    assert torch.all(weight.grad[[0, 2, 5]] == 0) and torch.all(weight.grad[[1, 3, 4]].abs().sum(-1) > 0)
    torch.testing.assert_close(OutputVocabulary().logits(hidden, weight), F.linear(hidden, weight))


def test_the_ids_round_trip_through_a_state_dict_into_an_unfitted_vocabulary() -> None:
    restored = OutputVocabulary()
    restored.load_state_dict(fitted([0, 3, 0, 1]).state_dict())
    assert restored.fitted and restored.ids.tolist() == [1, 3]
    # A checkpoint trained without one (no "ids" key) loads strictly and leaves it unfitted, to be fitted before training.
    host = torch.nn.Module()
    host.vocabulary = OutputVocabulary()
    assert host.load_state_dict({}, strict=True).missing_keys == []
    assert not host.vocabulary.fitted


def test_a_resumed_run_whose_training_targets_left_the_vocabulary_is_refused() -> None:
    from types import SimpleNamespace

    from lightning_diffusion.output_vocabulary import fit_output_vocabulary

    def trainer(counts: list[int]) -> SimpleNamespace:
        return SimpleNamespace(datamodule=SimpleNamespace(target_token_counts=lambda size: torch.tensor(counts)))

    vocabulary = OutputVocabulary()
    assert "3 ids" in fit_output_vocabulary(vocabulary, trainer([0, 3, 0, 1, 5, 0]), 6, ())
    assert fit_output_vocabulary(vocabulary, trainer([0, 1, 0, 0, 2, 0]), 6, ()) is None  # a subset: fine
    with pytest.raises(ValueError, match=r"1 token ids of the training targets \(first: 5\)"):
        fit_output_vocabulary(vocabulary, trainer([0, 1, 0, 0, 2, 7]), 6, ())
    assert fit_output_vocabulary(None, trainer([1]), 1, ()) is None


def test_autoregressive_label_smoothing_spreads_over_the_kept_ids(batch) -> None:
    torch.manual_seed(0)
    vocab = int(max(batch.src_ids.max(), batch.tgt_ids.max())) + 5
    module = AutoregressiveLM(
        network=lambda v: TransformerSeq2Seq(v, hidden_dim=16, encoder_layers=1, decoder_layers=1, num_heads=2, ffn_dim=32, dropout=0.0),
        vocab_size=vocab,
        label_smoothing=0.1,
        output_vocabulary=OutputVocabulary(),
    )
    counts = torch.bincount(batch.tgt_ids[batch.tgt_mask], minlength=vocab)
    module.network.output_vocabulary.fit(counts)
    ids = module.network.output_vocabulary.ids
    loss, terms, _, _ = module.compute_losses(batch)

    # By hand: a softmax over the kept ids only, smoothing averaged over them.
    net = module.network
    prev = torch.cat([torch.full_like(batch.tgt_ids[:, :1], module.special_ids.bos), batch.tgt_ids[:, :-1]], dim=1)
    hidden = net.hidden_states(prev, net.encode(batch.src_ids, batch.src_mask))[batch.tgt_mask]
    log_probs = F.linear(net.norm(hidden), net.output_proj.weight[ids]).log_softmax(-1)  # [N, V']
    column = torch.searchsorted(ids, batch.tgt_ids[batch.tgt_mask])
    nll = -log_probs.gather(-1, column[:, None]).squeeze(-1)
    expected = (0.9 * nll - 0.1 * log_probs.mean(-1)).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(terms["nll"], nll.mean())


def test_discrete_output_vocabulary_needs_absorbing_corruption() -> None:
    with pytest.raises(ValueError, match="output_vocabulary needs absorbing corruption"):
        DiscreteDiffusionLM(
            denoiser=lambda v: EncoderDecoderTokenDenoiser(v, hidden_dim=16, encoder_layers=1, decoder_layers=1, num_heads=2, ffn_dim=32),
            corruption=UniformCorruption(),
            loss_terms=[ReweightedCrossEntropy()],
            vocab_size=50,
            output_vocabulary=OutputVocabulary(),
        )


def test_kept_columns_map_ids_both_ways() -> None:
    vocabulary = fitted([0, 3, 0, 1, 5, 0])
    assert vocabulary.columns(torch.tensor([[1, 4], [3, 0]])).tolist() == [[0, 2], [1, -100]]
    assert vocabulary.token_ids(torch.tensor([2, 0, 1])).tolist() == [4, 1, 3]
    torch.manual_seed(0)
    weight, hidden = torch.randn(6, 4), torch.randn(2, 4)
    torch.testing.assert_close(vocabulary.kept_logits(hidden, weight), vocabulary.logits(hidden, weight)[:, [1, 3, 4]])


def test_discrete_losses_over_the_kept_ids_equal_the_full_head_with_minus_inf(batch) -> None:
    """The reweighted cross-entropy (with label smoothing over the kept ids) on the [N, V'] head equals, by hand,
    the cross-entropy of the renormalised full-head distribution."""
    torch.manual_seed(0)
    vocab = int(max(batch.src_ids.max(), batch.tgt_ids.max())) + 5
    module = DiscreteDiffusionLM(
        denoiser=lambda v: EncoderDecoderTokenDenoiser(v, hidden_dim=16, encoder_layers=1, decoder_layers=1, num_heads=2, ffn_dim=32, dropout=0.0),
        loss_terms=[ReweightedCrossEntropy(floor=1.0, label_smoothing=0.1, token_mean=True)],
        vocab_size=vocab,
        output_vocabulary=OutputVocabulary(),
    )
    module.denoiser.output_vocabulary.fit(torch.bincount(batch.tgt_ids[batch.tgt_mask], minlength=vocab), (module.special_ids.pad,))
    ids = module.denoiser.output_vocabulary.ids
    captured = capture_loss_inputs(module)
    module.train()
    loss, _ = module.compute_losses(batch)
    inputs = captured["inputs"]
    rows = inputs.hidden[inputs.corrupted]
    full = module.denoiser.output_logits(rows).float()  # [N, V], -inf outside
    log_probs = full.log_softmax(-1)[:, ids]
    targets = torch.searchsorted(ids, inputs.x0[inputs.corrupted])
    expected_rows = 0.9 * -log_probs.gather(-1, targets[:, None]).squeeze(-1) - 0.1 * log_probs.mean(-1)
    torch.testing.assert_close(loss, expected_rows.sum() / inputs.corrupted.sum())



def test_every_discrete_term_reads_the_kept_columns_and_evaluation_skips_unknown_targets(batch) -> None:
    """Neighbour unlikelihood and SUNDAE's unrolled term train on the [N, V'] head; in evaluation a reference id
    outside the vocabulary warns and is left out (finite loss); D3PM's hybrid loss, which needs every id, is refused."""
    torch.manual_seed(0)
    vocab = int(max(batch.src_ids.max(), batch.tgt_ids.max())) + 5

    def build(terms, **kwargs):
        return DiscreteDiffusionLM(
            denoiser=lambda v: EncoderDecoderTokenDenoiser(v, hidden_dim=16, encoder_layers=1, decoder_layers=1, num_heads=2, ffn_dim=32, dropout=0.0),
            loss_terms=terms, vocab_size=vocab, output_vocabulary=OutputVocabulary(), **kwargs,
        )  # fmt: skip

    module = build([ReweightedCrossEntropy(floor=1.0, label_smoothing=0.0), NeighbourUnlikelihood()], unroll_steps=2, glancing=Glancing(0.5))
    counts = torch.bincount(batch.tgt_ids[batch.tgt_mask], minlength=vocab)
    module.denoiser.output_vocabulary.fit(counts, (module.special_ids.pad,))
    module.train()
    loss, terms = module.compute_losses(batch)
    assert torch.isfinite(loss) and set(terms) == {"rdm", "unlikelihood", "unrolled"}
    loss.backward()

    dropped = int(batch.tgt_ids[0, 0])
    module.denoiser.output_vocabulary.fit(counts.index_fill(0, torch.tensor([dropped]), 0), (module.special_ids.pad,))
    module.eval()
    with pytest.warns(UserWarning, match="outside the output vocabulary"):
        loss, _ = module.compute_losses(batch)
    assert torch.isfinite(loss)

    with pytest.raises(ValueError, match="D3PMHybrid scores the posterior over the whole vocabulary"):
        build([D3PMHybrid()])


def continuous_with_vocabulary(**kwargs):
    """A tiny Difformer-style model (anchor + rounding heads, length predictor) whose output vocabulary keeps the ids
    of ``make_batch``'s targets (and EOS, padding)."""
    batch = make_batch()
    module = make_module("encoder_decoder", self_conditioning=False, length_mode=True, output_vocabulary=OutputVocabulary(), **kwargs)
    counts = torch.bincount(batch.tgt_ids[batch.tgt_mask], minlength=VOCAB)
    module.denoiser.output_vocabulary.fit(counts, (module.special_ids.eos, module.special_ids.pad))
    return module, batch, counts


def test_continuous_rounding_and_anchor_losses_over_the_kept_ids_equal_the_full_head_with_minus_inf() -> None:
    """RoundingNLL on z0 and AnchorNLL (label smoothing 0.1, spread over the kept ids) on the [N, V'] head equal, by
    hand, the cross-entropies of the renormalised full head (-inf outside) restricted to the kept ids."""
    module, batch, _ = continuous_with_vocabulary(loss_terms=[RoundingNLL(), AnchorNLL(label_smoothing=0.1), LengthNLL()])
    denoiser, ids = module.denoiser, module.denoiser.output_vocabulary.ids
    assert 4 < ids.numel() < VOCAB
    captured = capture_loss_inputs(module)
    module.train()
    _, terms, _, _ = module.compute_losses(batch)
    inputs = captured["inputs"]
    mask, targets = inputs.mask, torch.searchsorted(ids, inputs.target_ids[inputs.mask])

    def by_hand(latents, smoothing):
        full = denoiser.logits(latents[mask]).float()  # [N, V], -inf outside the kept ids
        assert torch.all(full[:, ~torch.isin(torch.arange(VOCAB), ids)] == float("-inf"))
        log_probs = full.log_softmax(-1)[:, ids]
        rows = (1 - smoothing) * -log_probs.gather(-1, targets[:, None]).squeeze(-1) - smoothing * log_probs.mean(-1)
        per_example = torch.zeros(mask.shape).masked_scatter(mask, rows).sum(-1) / mask.sum(-1)
        return per_example.mean()

    torch.testing.assert_close(terms["rounding"], by_hand(inputs.z0, 0.0))
    torch.testing.assert_close(terms["anchor"], by_hand(inputs.x0_hat, 0.1))


def test_continuous_decoding_rounds_and_clamps_to_kept_ids_only() -> None:
    """Rounding is the full head's argmax and never an id outside the vocabulary; clamping picks kept rows; the
    sampler's tokens are all kept ids."""
    module, batch, counts = continuous_with_vocabulary()
    denoiser = module.denoiser
    kept = torch.isin(torch.arange(VOCAB), denoiser.output_vocabulary.ids)
    torch.manual_seed(1)
    z = torch.randn(3, 7, denoiser.latent_dim) * 3
    rounded = round_to_tokens(denoiser, z, chunk_rows=5)
    assert torch.equal(rounded, denoiser.logits(z).argmax(-1)) and kept[rounded].all()
    assert not kept[torch.nn.functional.linear(z, denoiser.embedding_table()).argmax(-1)].all()  # the test can fail
    table = denoiser.kept_table()
    assert torch.equal(table, denoiser.embedding_table()[kept])
    module.eval()
    cond = denoiser.encode(batch.src_ids, batch.src_mask)
    sampled = DDIMSampler(steps=3, clamp=True).sample(denoiser, module.schedule, cond, 6, generator=torch.Generator().manual_seed(0))
    assert kept[sampled.token_ids].all()
    on_rows = (sampled.latents[..., None, :] == table).all(-1).any(-1)  # the last update lands on a clamped estimate
    assert on_rows.all()


def test_rounding_without_repeats_maps_the_kept_columns_back_to_token_ids() -> None:
    from lightning_diffusion.samplers.no_repeat_rounding import round_without_repeats

    module, _, _ = continuous_with_vocabulary()
    denoiser = module.denoiser
    kept = torch.isin(torch.arange(VOCAB), denoiser.output_vocabulary.ids)
    z = torch.randn(5, 7, denoiser.latent_dim, generator=torch.Generator().manual_seed(2)) * 3
    chosen = round_without_repeats(denoiser, z, None, exempt=(), penalty=0.0)
    assert torch.equal(chosen, denoiser.logits(z).argmax(-1))  # penalty 0: the argmax, as ids, not columns
    chosen = round_without_repeats(denoiser, z, None, exempt=(), penalty=float("inf"))
    assert kept[chosen].all() and not (chosen[:, 1:] == chosen[:, :-1]).any()


def test_continuous_evaluation_skips_unknown_targets_and_neighbour_unlikelihood_reads_columns() -> None:
    module, batch, counts = continuous_with_vocabulary(loss_terms=[X0MSE(), AnchorNLL(), ContinuousNeighbourUnlikelihood(), LengthNLL()])
    module.train()
    loss, terms, _, _ = module.compute_losses(batch)
    assert torch.isfinite(loss) and set(terms) == {"mse", "anchor", "unlikelihood", "length"}
    loss.backward()
    dropped = int(batch.tgt_ids[0, 0])
    module.denoiser.output_vocabulary.fit(counts.index_fill(0, torch.tensor([dropped]), 0), (module.special_ids.eos, module.special_ids.pad))
    module.eval()
    with pytest.warns(UserWarning, match="outside the output vocabulary"):
        loss, _, _, _ = module.compute_losses(batch)
    assert torch.isfinite(loss)


def test_keyword_guidance_refuses_a_word_the_head_cannot_emit() -> None:
    module, batch, counts = continuous_with_vocabulary()
    outside = int((counts == 0).nonzero()[-1])
    x0 = torch.randn(2, 4, module.denoiser.latent_dim)
    assert torch.isfinite(KeywordScorer([int(batch.tgt_ids[0, 0])])(x0, module.denoiser, None)).all()
    with pytest.raises(ValueError, match=rf"token ids \[{outside}\] are outside the model's output vocabulary"):
        KeywordScorer([outside])(x0, module.denoiser, None)


def _head(model, part: str):
    """The model's ``[..., V]`` output head and its input width."""
    owner = getattr(model, part)
    if part == "network" or hasattr(owner, "output_logits"):
        return owner.output_logits, owner.hidden_dim
    return owner.logits, owner.latent_dim


@pytest.mark.parametrize(
    ("recipe", "part"),
    [
        (RECIPES_DIR / "discrete" / "multi30k_en_de.yaml", "denoiser"),
        (RECIPES_DIR / "autoregressive" / "multi30k_en_de.yaml", "network"),
        (RECIPES_DIR / "difformer" / "multi30k_en_de.yaml", "denoiser"),
    ],
)
def test_fit_fits_the_ids_on_the_training_targets_and_exports_carry_them(recipe: Path, part: str, tmp_path: Path, tiny_data: TinyData) -> None:
    # The recipes' EMA with the sanity check on: the average must take the fitted ids before it swaps them in.
    cli = fit_tiny(tmp_path / "run", recipe, tiny_data, extra={"trainer.num_sanity_val_steps": 1})
    module, dm = cli.model, cli.datamodule
    expected = dm.target_token_counts(module.vocab_size) > 0
    expected[[module.special_ids.eos, module.special_ids.pad]] = True
    ids = getattr(module, part).output_vocabulary.ids
    assert ids.tolist() == expected.nonzero().flatten().tolist()
    assert 0 < ids.numel() < module.vocab_size

    model = load_pretrained(export_pretrained(next((tmp_path / "run").rglob("last.ckpt")), tmp_path / "export"))
    assert torch.equal(getattr(model, part).output_vocabulary.ids, ids)
    head, width = _head(model, part)
    logits = head(torch.randn(3, width))
    assert torch.all(logits[:, ~expected] == float("-inf")) and torch.isfinite(logits[:, expected]).all()
