"""The autoregressive baseline: causal attention and the KV cache in the shared blocks, the encoder-decoder
network (teacher forcing = incremental decoding), greedy and beam search, the LightningModule (training,
decoding, NaN guard) and checkpoints written by the CLI."""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import RECIPES_DIR
from torch import Tensor

import lightning_diffusion.cli as cli_module
from lightning_diffusion import DiffusionLM
from lightning_diffusion.attention import attention
from lightning_diffusion.autoregressive import (
    AutoregressiveLM,
    BeamSearch,
    GreedySearch,
    TransformerSeq2Seq,
)
from lightning_diffusion.autoregressive.search import SearchOutput
from lightning_diffusion.data import (
    tokenizer_fingerprint,
)
from lightning_diffusion.data.tokenizer import SpecialIds
from lightning_diffusion.denoisers import DiffuSeqDenoiser
from lightning_diffusion.denoisers.layers import KVCache, MultiHeadAttention
from lightning_diffusion.schedules import SqrtSchedule
from lightning_diffusion.seq2seq import Seq2SeqModule
from lightning_diffusion.types import Conditioning, Seq2SeqBatch

PAD, BOS, EOS = 0, 2, 3
V = 50


def tiny_network(**kwargs: Any) -> functools.partial[TransformerSeq2Seq]:
    options: dict[str, Any] = dict(
        hidden_dim=32, encoder_layers=1, decoder_layers=2, num_heads=2, ffn_dim=64, dropout=0.0, max_positions=64
    )
    options.update(kwargs)
    return functools.partial(TransformerSeq2Seq, **options)


@pytest.fixture
def net() -> TransformerSeq2Seq:
    torch.manual_seed(0)
    return tiny_network()(V).eval()


def sources(b: int = 3, s: int = 7, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[1, s - 2 :] = False
    ids[~mask] = PAD
    return ids, mask


def prev_tokens(b: int = 3, length: int = 6, seed: int = 1) -> Tensor:
    ids = torch.randint(5, V, (b, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = BOS
    return ids


def reference_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(K)) v with ``allowed`` ``[B, 1 or H, M, N]`` (True = attend)."""
    scores = torch.einsum("bmhk,bnhk->bhmn", q, k) / math.sqrt(q.shape[-1])
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("bhmn,bnhk->bmhk", weights, v)


# ---------------------------------------------------------------------------------------------- attention


def test_causal_attention_matches_reference_and_aligns_to_the_end() -> None:
    g = torch.Generator().manual_seed(0)
    b, n, h, k = 2, 7, 2, 8
    q = torch.randn(b, n, h, k, generator=g)
    keys = torch.randn(b, n, h, k, generator=g)
    values = torch.randn(b, n, h, k, generator=g)
    tri = torch.ones(n, n, dtype=torch.bool).tril()
    full = attention(q, keys, values, causal=True)
    torch.testing.assert_close(full, reference_attention(q, keys, values, tri[None, None]), atol=1e-5, rtol=1e-5)
    # The last M queries against all N keys (incremental decoding) see what they see in the full pass.
    for m in (1, 3, n):
        torch.testing.assert_close(attention(q[:, n - m :], keys, values, causal=True), full[:, n - m :], atol=1e-5, rtol=1e-5)
    # Key padding and causality combine (query i sees unpadded keys j <= N - M + i).
    pad = torch.ones(b, n, dtype=torch.bool)
    pad[0, 1] = False
    pad[1, 4] = False
    m = 4
    allowed = pad[:, None, None, :] & tri[n - m :][None, None]
    out = attention(q[:, n - m :], keys, values, pad, causal=True)
    torch.testing.assert_close(out, reference_attention(q[:, n - m :], keys, values, allowed), atol=1e-5, rtol=1e-5)


def test_causal_attention_needs_no_more_queries_than_keys() -> None:
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="causal"):
        attention(q, q[:, :2], q[:, :2], causal=True)


def test_non_causal_attention_unchanged() -> None:
    q = torch.randn(2, 5, 2, 8, generator=torch.Generator().manual_seed(1))
    everything = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    torch.testing.assert_close(attention(q, q, q), reference_attention(q, q, q, everything), atol=1e-5, rtol=1e-5)


def test_mha_self_attention_cache_appends_and_cross_cache_is_projected_once() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2).eval()
    cross = MultiHeadAttention(16, 2).eval()
    x = torch.randn(2, 5, 16)
    context = torch.randn(2, 4, 16)
    full = mha(x, causal=True)
    full_cross = cross(x, context)
    cache = KVCache()
    calls = []
    handle = cross.kv_proj.register_forward_hook(lambda *_: calls.append(1))
    for i in range(5):
        torch.testing.assert_close(mha(x[:, i : i + 1], causal=True, cache=cache), full[:, i : i + 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cross(x[:, i : i + 1], context, cache=cache), full_cross[:, i : i + 1], atol=1e-5, rtol=1e-5)
    handle.remove()
    assert cache.length == 5 and cache.self_k is not None and cache.self_k.shape == (2, 5, 2, 8)
    assert len(calls) == 1
    cache.reorder(torch.tensor([1, 1, 0]))
    assert cache.self_k.shape[0] == 3 and cache.cross_k is not None and cache.cross_k.shape[0] == 3
    kept = cache.cross_k
    cache.reorder(torch.tensor([2, 0, 1]), cross=False)
    assert cache.cross_k is kept


# ---------------------------------------------------------------------------------------------- network


def test_forward_shapes_and_tied_output(net: TransformerSeq2Seq) -> None:
    src, mask = sources()
    logits = net(prev_tokens(), net.encode(src, mask))
    assert logits.shape == (3, 6, V)
    assert net.output_proj.weight is net.token_embedding.weight
    untied = tiny_network(tie_embeddings=False)(V)
    assert untied.output_proj.weight is not untied.token_embedding.weight


def test_decoder_is_causal(net: TransformerSeq2Seq) -> None:
    src, mask = sources()
    cond = net.encode(src, mask)
    prev = prev_tokens()
    changed = prev.clone()
    changed[:, 4] = (changed[:, 4] + 1 - 5) % (V - 5) + 5
    a, b = net(prev, cond), net(changed, cond)
    torch.testing.assert_close(a[:, :4], b[:, :4], atol=0, rtol=0)
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_incremental_decoding_equals_teacher_forcing(net: TransformerSeq2Seq) -> None:
    src, mask = sources()
    cond = net.encode(src, mask)
    prev = prev_tokens(length=8)
    full = net(prev, cond)
    cache = net.init_cache(cond)
    for i in range(prev.shape[1]):
        step = net.decode_step(prev[:, i], cond, cache, i)
        torch.testing.assert_close(step, full[:, i], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cache holds"):
        net.decode_step(prev[:, 0], cond, cache, 3)


def test_cache_reorder_follows_rows(net: TransformerSeq2Seq) -> None:
    src, mask = sources()
    cond = net.encode(src, mask)
    prev = prev_tokens(length=5)
    cache = net.init_cache(cond, repeat=2)
    wide = cond.repeat_interleave(2)
    wide_prev = prev.repeat_interleave(2, dim=0)
    for i in range(3):
        net.decode_step(wide_prev[:, i], wide, cache, i)
    rows = torch.tensor([1, 0, 3, 3, 5, 4])  # rows stay within their source
    net.reorder_cache(cache, rows, cross=False)
    swapped = wide_prev[rows]
    full = net(swapped, wide)
    for i in range(3, 5):
        torch.testing.assert_close(net.decode_step(swapped[:, i], wide, cache, i), full[:, i], atol=1e-5, rtol=1e-5)


def test_positions_beyond_max_positions_raise() -> None:
    net = tiny_network(max_positions=4)(V).eval()
    src, mask = sources(s=3)
    with pytest.raises(ValueError, match="max_positions"):
        net(prev_tokens(length=5), net.encode(src, mask))


# ---------------------------------------------------------------------------------------------- search


def teacher_forced_score(net: TransformerSeq2Seq, cond: Conditioning, tokens: Tensor) -> Tensor:
    """Sum of log-probabilities of each row of ``tokens`` ``[B, L]`` up to and including its first EOS."""
    prev = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)
    lp = F.log_softmax(net(prev, cond).float(), -1).gather(-1, tokens[..., None]).squeeze(-1)
    real = torch.ones_like(tokens, dtype=torch.bool)
    real[:, 1:] = (tokens[:, :-1] != EOS).cumprod(1).bool()
    return (lp * real).sum(-1)


def hypothesis_lengths(out: SearchOutput) -> Tensor:
    return (out.token_ids != PAD).sum(-1)


@pytest.mark.parametrize("search", [GreedySearch(), BeamSearch(beam_size=3, length_penalty=1.0)], ids=["greedy", "beam"])
def test_searches_end_with_eos_within_max_lengths_and_score_their_hypothesis(net: TransformerSeq2Seq, search) -> None:
    src, mask = sources(b=4, seed=2)
    cond = net.encode(src, mask)
    max_lengths = torch.tensor([1, 4, 9, 6])
    out = search.search(net, cond, BOS, EOS, PAD, max_lengths)
    lengths = hypothesis_lengths(out)
    assert bool((lengths >= 1).all()) and bool((lengths <= max_lengths).all())
    for row, n in zip(out.token_ids.tolist(), lengths.tolist(), strict=True):
        assert row[n - 1] == EOS and EOS not in row[: n - 1] and all(t == PAD for t in row[n:])
        assert BOS not in row[:n] and PAD not in row[:n]
    assert out.token_ids[0, 0] == EOS  # max length 1: only the EOS fits
    assert out.steps == int(lengths.max()) and out.token_ids.shape[1] == out.steps
    # The reported score is the model's own score of the returned hypothesis (so the cache followed the beams).
    normaliser = lengths.float() ** (search.length_penalty if isinstance(search, BeamSearch) else 0.0)
    torch.testing.assert_close(out.scores * normaliser, teacher_forced_score(net, cond, out.token_ids), atol=1e-4, rtol=1e-4)


def test_greedy_equals_beam_search_of_one(net: TransformerSeq2Seq) -> None:
    src, mask = sources(b=4, seed=3)
    cond = net.encode(src, mask)
    max_lengths = torch.tensor([12, 5, 9, 2])
    greedy = GreedySearch().search(net, cond, BOS, EOS, PAD, max_lengths)
    beam = BeamSearch(beam_size=1).search(net, cond, BOS, EOS, PAD, max_lengths)
    assert torch.equal(greedy.token_ids, beam.token_ids)
    assert greedy.steps == beam.steps


class MarkovModel:
    """A stand-in network whose next-token distribution depends on the last token only (``table[last]``);
    it counts decoder calls and checks the search's cache bookkeeping."""

    def __init__(
        self, table: dict[int, dict[int, float]], vocab: int = 8, default: dict[int, float] | None = None
    ) -> None:
        self.logits = torch.full((vocab, vocab), -30.0)
        for last in range(vocab):
            for token, p in table.get(last, default or {}).items():
                self.logits[last, token] = math.log(p)
        self.calls = 0

    def init_cache(self, cond: Conditioning, repeat: int = 1) -> list[KVCache]:
        return [KVCache(cross_k=cond.hidden.repeat_interleave(repeat, dim=0))]

    def reorder_cache(self, cache: list[KVCache], indices: Tensor, cross: bool = True) -> list[KVCache]:
        for c in cache:
            c.reorder(indices, cross=cross)
        return cache

    def decode_step(self, last_ids: Tensor, cond: Conditioning, cache: list[KVCache], position: int) -> Tensor:
        self.calls += 1
        assert cache[0].cross_k is not None and cache[0].cross_k.shape[0] == last_ids.shape[0] == cond.mask.shape[0]
        return self.logits[last_ids]


A, B_, C = 5, 6, 7
# Greedy takes A (0.55) and is then stuck with spread-out continuations; B then EOS is far more likely overall.
MYOPIC = {
    BOS: {A: 0.55, B_: 0.45},
    A: {EOS: 0.3, A: 0.25, B_: 0.25, C: 0.2},
    B_: {EOS: 0.95, C: 0.05},
    C: {EOS: 1.0},
}


def markov_cond(b: int = 2) -> Conditioning:
    return Conditioning(hidden=torch.zeros(b, 3, 4), mask=torch.ones(b, 3, dtype=torch.bool))


def test_beam_search_beats_myopic_greedy() -> None:
    model = MarkovModel(MYOPIC)
    max_lengths = torch.tensor([5, 5])
    greedy = GreedySearch().search(model, markov_cond(), BOS, EOS, PAD, max_lengths)  # type: ignore[arg-type]
    beam = BeamSearch(beam_size=2, length_penalty=0.0).search(model, markov_cond(), BOS, EOS, PAD, max_lengths)  # type: ignore[arg-type]
    assert greedy.token_ids[0].tolist() == [A, EOS]
    assert beam.token_ids[0].tolist() == [B_, EOS]
    assert float(beam.scores[0]) == pytest.approx(math.log(0.45 * 0.95), abs=1e-4)
    assert float(beam.scores[0]) > float(greedy.scores[0]) == pytest.approx(math.log(0.55 * 0.3), abs=1e-4)


def test_beam_search_keeps_finished_hypotheses_and_applies_the_length_penalty() -> None:
    # EOS right away (0.52) against A B EOS = 0.48 * 0.9 * 0.9: better per token, worse in total.
    table = {BOS: {EOS: 0.52, A: 0.48}, A: {B_: 0.9, C: 0.1}, B_: {EOS: 0.9, C: 0.1}, C: {C: 1.0}}
    short = math.log(0.52)
    long = math.log(0.48 * 0.9 * 0.9)
    assert short > long and short / 1 < long / 3
    raw = BeamSearch(beam_size=2, length_penalty=0.0).search(MarkovModel(table), markov_cond(1), BOS, EOS, PAD, torch.tensor([8]))  # type: ignore[arg-type]
    assert raw.token_ids[0].tolist() == [EOS]  # finished at step 1 and kept while the other beam went on
    assert float(raw.scores[0]) == pytest.approx(short, abs=1e-4) and raw.steps == 3
    normed = BeamSearch(beam_size=2, length_penalty=1.0).search(MarkovModel(table), markov_cond(1), BOS, EOS, PAD, torch.tensor([8]))  # type: ignore[arg-type]
    assert normed.token_ids[0].tolist() == [A, B_, EOS]
    assert float(normed.scores[0]) == pytest.approx(long / 3, abs=1e-4)


def test_searches_stop_at_eos_and_drop_finished_sources() -> None:
    eager = MarkovModel({}, default={EOS: 0.9, A: 0.1})
    for search in (GreedySearch(), BeamSearch(beam_size=3)):
        eager.calls = 0
        out = search.search(eager, markov_cond(3), BOS, EOS, PAD, torch.tensor([10, 10, 10]))  # type: ignore[arg-type]
        assert out.token_ids.tolist() == [[EOS]] * 3
        assert out.steps == (1 if isinstance(search, GreedySearch) else 2)  # beams need k finished hypotheses
        assert eager.calls == out.steps


def test_searches_force_eos_at_max_length() -> None:
    loop = MarkovModel({BOS: {A: 0.99, EOS: 0.01}, A: {A: 0.99, EOS: 0.01}})
    max_lengths = torch.tensor([3, 6])
    for search in (GreedySearch(), BeamSearch(beam_size=2)):
        out = search.search(loop, markov_cond(2), BOS, EOS, PAD, max_lengths)  # type: ignore[arg-type]
        lengths = hypothesis_lengths(out)
        assert bool((lengths <= max_lengths).all())
        assert out.token_ids[1].tolist()[int(lengths[1]) - 1] == EOS
        assert out.steps <= 6
    greedy = GreedySearch().search(loop, markov_cond(2), BOS, EOS, PAD, max_lengths)  # type: ignore[arg-type]
    assert greedy.token_ids.tolist() == [[A, A, EOS, PAD, PAD, PAD], [A, A, A, A, A, EOS]]


def test_beam_search_rejects_bad_beam() -> None:
    with pytest.raises(ValueError, match="beam_size"):
        BeamSearch(beam_size=0)
    assert BeamSearch(4, 1.0).describe() == "BeamSearch(beam=4, length_penalty=1.0)"
    assert GreedySearch().describe() == "GreedySearch"


# ---------------------------------------------------------------------------------------------- module


def make_module(tok: Any, **kwargs: Any) -> AutoregressiveLM:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(network=tiny_network(), vocab_size=len(tok))
    options.update(kwargs)
    module = AutoregressiveLM(**options)
    module.attach_tokenizer(tok, tokenizer_fingerprint(tok))
    return module




def test_special_ids_come_from_the_tokenizer(tok: Any) -> None:
    module = make_module(tok)
    ids = module.special_ids
    assert (ids.pad, ids.bos, ids.eos) == (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    assert (ids.pad, ids.bos, ids.eos) == (PAD, BOS, EOS)
    unattached = AutoregressiveLM(network=tiny_network(), vocab_size=len(tok)).special_ids
    assert unattached == DiffusionLM(  # one fallback for every model kind: the library tokenizer's ids
        denoiser=functools.partial(DiffuSeqDenoiser, hidden_dim=16, num_layers=1, num_heads=2, ffn_dim=32, latent_dim=8),
        schedule=SqrtSchedule(10), vocab_size=len(tok),
    ).special_ids == SpecialIds.library_default()
    assert (unattached.pad, unattached.bos, unattached.eos) == (PAD, BOS, EOS)


def test_loss_is_label_smoothed_token_mean_and_ignores_padding(tok: Any, batch: Seq2SeqBatch) -> None:
    module = make_module(tok, label_smoothing=0.1)
    loss, terms, nll, mask = module.compute_losses(batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and set(terms) == {"nll"}
    assert nll.shape == mask.shape == batch.tgt_ids.shape
    assert float(terms["nll"]) == pytest.approx(float(nll[mask].mean()), rel=1e-5)
    # The reference: cross-entropy with PyTorch's label smoothing over the real positions, decoder input shifted.
    assert batch.tgt_ids is not None
    prev = torch.cat([torch.full_like(batch.tgt_ids[:, :1], BOS), batch.tgt_ids[:, :-1]], 1)
    logits = module.network(prev, module.network.encode(batch.src_ids, batch.src_mask))
    expected = F.cross_entropy(logits[mask], batch.tgt_ids[mask], label_smoothing=0.1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # Whatever sits in padded target positions does not matter.
    assert batch.tgt_mask is not None
    noisy = Seq2SeqBatch(**{**batch.__dict__, "tgt_ids": batch.tgt_ids.masked_fill(~batch.tgt_mask, 7)})
    assert module.compute_losses(noisy)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    assert module.evaluation_loss(batch)[0].item() == pytest.approx(loss.item(), rel=1e-6)


def test_training_reduces_the_loss_on_a_repeated_batch(tok: Any, batch: Seq2SeqBatch) -> None:
    module = make_module(tok, optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    optimizer = module.configure_optimizers()
    module.train()
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        for _ in range(30):
            optimizer.zero_grad()
            loss = module.training_step(batch, 0)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_nan_loss_raises_naming_the_step(tok: Any, batch: Seq2SeqBatch, monkeypatch: pytest.MonkeyPatch) -> None:
    module = make_module(tok)
    monkeypatch.setattr(type(module), "global_step", property(lambda self: 7))
    with torch.no_grad():
        module.network.output_proj.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"global step 7 \(terms: nll\)"):
        module.training_step(batch, 0)


def test_max_lengths_rule(tok: Any) -> None:
    module = make_module(tok, max_length=20, length_ratio=1.5, length_offset=10)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    for row, n in enumerate((1, 5, 12)):
        mask[row, :n] = True
    assert module.max_lengths(mask).tolist() == [12, 18, 20]  # ceil(1.5) + 10, ceil(7.5) + 10, capped
    capped = make_module(tok, max_length=500, length_offset=100)
    assert int(capped.max_lengths(mask).max()) == capped.network.max_positions


def test_generate_encodes_once_and_reports_search_steps(tok: Any, batch: Seq2SeqBatch) -> None:
    module = make_module(tok, search=BeamSearch(beam_size=3), max_length=8).eval()
    encoder_calls, cross_projections = [], []
    module.network.encoder.register_forward_hook(lambda *_: encoder_calls.append(1))
    for layer in module.network.layers:
        layer.cross_attn.kv_proj.register_forward_hook(lambda *_: cross_projections.append(1))
    result = module.generate(batch.src_ids, batch.src_mask)
    assert len(encoder_calls) == 1
    assert len(cross_projections) == len(module.network.layers)  # once per layer, not per step
    assert len(result.texts) == len(batch) and all(isinstance(t, str) for t in result.texts)
    assert result.candidates == 3 and 1 <= result.nfe <= 8
    greedy = make_module(tok, max_length=8).eval().generate(batch.src_ids, batch.src_mask)
    assert greedy.candidates == 1


def test_decoding_settings(tok: Any) -> None:
    beam = make_module(tok, search=BeamSearch(4, 1.0)).decoding_settings()
    assert beam.startswith("BeamSearch(beam=4, length_penalty=1.0)")
    assert "NFE = decoder steps" in beam and "min(128, ceil(1.5 x source length) + 10)" in beam
    assert make_module(tok).decoding_settings().startswith("GreedySearch")


def test_constructor_checks(tok: Any) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        AutoregressiveLM(network=tiny_network())
    with pytest.raises(ValueError, match="label_smoothing"):
        AutoregressiveLM(network=tiny_network(), vocab_size=len(tok), label_smoothing=1.0)
    assert isinstance(make_module(tok), Seq2SeqModule)


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture
def run_ar_cli(run_cli, monkeypatch: pytest.MonkeyPatch):
    """``lightning_diffusion.cli.main`` taking any Seq2SeqModule subclass as the model (a no-op once the CLI
    is built on Seq2SeqModule rather than DiffusionLM)."""
    monkeypatch.setattr(cli_module, "DiffusionLM", Seq2SeqModule, raising=False)
    return run_cli


def test_cli_fit_checkpoint_loads_without_arguments(tmp_path: Path, tiny_overrides, run_ar_cli) -> None:
    recipe = RECIPES_DIR / "autoregressive" / "multi30k_en_de.yaml"
    overrides = tiny_overrides(tmp_path, recipe=recipe, extra={"model.max_length": 8})
    cli = run_ar_cli(["fit", "-c", str(recipe), *overrides])
    assert cli is not None and cli.trainer.global_step == 2
    assert isinstance(cli.model, AutoregressiveLM)
    assert cli.model.network.hidden_dim == 32 and len(cli.model.network.layers) == 1
    assert {"train/loss", "train/nll", "val/loss", "val/nll", "val/bleu"} <= set(cli.trainer.logged_metrics)
    report = cli.model.last_report
    assert report.stage == "val" and report.settings.startswith("BeamSearch(beam=4, length_penalty=1.0)")

    (ckpt,) = tmp_path.rglob("last.ckpt")
    loaded = AutoregressiveLM.load_from_checkpoint(ckpt)  # the CLI stored the recipe's class_path config
    assert isinstance(loaded.network, TransformerSeq2Seq) and loaded.network.hidden_dim == 32
    assert isinstance(loaded.search, BeamSearch) and loaded.search.beam_size == 4
    assert loaded.max_length == 8 and loaded.label_smoothing == 0.1
    stored = torch.load(ckpt, weights_only=False)["state_dict"]
    assert loaded.state_dict().keys() == stored.keys()
    assert all(torch.equal(loaded.state_dict()[k], stored[k]) for k in stored)
    assert loaded.tokenizer is None
    dm = cli.datamodule
    loaded.attach_tokenizer(dm.tokenizer, dm.tokenizer_fingerprint)
    loaded.eval()
    cli.model.eval()
    val = next(iter(dm.val_dataloader()))
    assert loaded.generate(val.src_ids, val.src_mask).texts == cli.model.generate(val.src_ids, val.src_mask).texts


def test_programmatic_checkpoint_round_trip(tok: Any, tmp_path: Path) -> None:
    module = make_module(tok, search=BeamSearch(2, 0.5), max_length=12)
    path = tmp_path / "model.ckpt"
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "pytorch-lightning_version": "2.6.0"},
        path,
    )
    loaded = AutoregressiveLM.load_from_checkpoint(path, network=tiny_network(), search=BeamSearch(2, 0.5))
    assert loaded.max_length == 12 and loaded.hparams["vocab_size"] == len(tok)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in module.state_dict().items())


# ---------------------------------------------------------------------------------------------- EMA


def test_ema_validates_on_the_average_keeps_ties_and_trains_on_raw_weights(tiny_datamodule: Any, tmp_path: Path) -> None:
    """With the EMA callback (as in the recipes), validation runs on the EMA of the weights (the hand-computed
    warm-up EMA of the raw weights after each step), training continues on the raw weights, and the tied output
    projection stays tied to the token embedding in the module and in the EMA copy."""
    from lightning.pytorch import Callback, Trainer

    from lightning_diffusion.callbacks import EMA

    decay = 0.5

    class Probe(Callback):
        def __init__(self) -> None:
            self.raw: list[dict[str, Tensor]] = []  # parameters after each optimizer step
            self.before_step: list[dict[str, Tensor]] = []
            self.in_validation: dict[str, Tensor] = {}

        @staticmethod
        def params(module: Any) -> dict[str, Tensor]:
            return {name: p.detach().clone() for name, p in module.named_parameters()}

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.before_step.append(self.params(pl_module))

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.raw.append(self.params(pl_module))

        def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            if not self.in_validation:
                self.in_validation = self.params(pl_module)
                network = pl_module.network
                assert network.output_proj.weight is network.token_embedding.weight

    torch.manual_seed(0)
    module = AutoregressiveLM(network=tiny_network(), vocab_size=tiny_datamodule.vocab_size, max_length=8)
    ema, probe = EMA(decay=decay), Probe()
    trainer = Trainer(
        max_steps=4, val_check_interval=3, limit_val_batches=1, num_sanity_val_steps=0, accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, use_distributed_sampler=False, callbacks=[ema, probe],
    )  # fmt: skip
    trainer.fit(module, datamodule=tiny_datamodule)
    assert trainer.global_step == 4 and probe.in_validation and module.last_report is not None

    # AveragedModel copies the weights on its first update, then lerps with weight 1 - min(decay, (1 + n) / (10 + n)).
    expected = dict(probe.raw[0])
    for n, raw in enumerate(probe.raw[1:3], start=1):
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        expected = {name: value + weight * (raw[name] - value) for name, value in expected.items()}
    for name, value in probe.in_validation.items():
        assert torch.allclose(value, expected[name], atol=1e-6), name
    assert any(not torch.equal(probe.in_validation[name], probe.raw[2][name]) for name in expected)
    # Step 4 started from the raw weights of step 3, not from the average.
    assert all(torch.equal(probe.before_step[3][name], probe.raw[2][name]) for name in expected)
    # Ties hold in the EMA copy and in the module, which ends training with the average.
    average = ema._average_model.module.network
    assert average.output_proj.weight is average.token_embedding.weight
    assert module.network.output_proj.weight is module.network.token_embedding.weight
