"""The encoder-decoder denoiser (SeqDiffuSeq / Difformer): shapes, masks, adaLN-Zero, embedding options,
dropout, limits, one encoder pass per generate call, and a local pretrained (BERT) encoder."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_diffusion import DiffusionLM
from lightning_diffusion.denoisers import EncoderDecoderDenoiser, PretrainedEncoder, TransformerEncoder
from lightning_diffusion.length import LengthPredictor
from lightning_diffusion.losses import X0MSE, AnchorNLL, LengthNLL
from lightning_diffusion.samplers import DDIMSampler
from lightning_diffusion.schedules import SqrtSchedule
from lightning_diffusion.types import Conditioning, Seq2SeqBatch

VOCAB, LATENT, HIDDEN = 60, 16, 32


def make(**kwargs: Any) -> EncoderDecoderDenoiser:
    torch.manual_seed(kwargs.pop("seed", 0))
    options: dict[str, Any] = dict(
        vocab_size=VOCAB, latent_dim=LATENT, hidden_dim=HIDDEN, encoder_layers=1, decoder_layers=2, num_heads=2,
        ffn_dim=64, dropout=0.1, max_positions=32,
    )  # fmt: skip
    options.update(kwargs)
    return EncoderDecoderDenoiser(**options)


def inputs(b: int = 2, s: int = 5, length: int = 6, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(5, VOCAB, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.bool)
    z = torch.randn(b, length, LATENT, generator=g)
    t = torch.randint(1, 100, (b,), generator=g)
    return src, mask, z, t


class WordTokenizer:
    """Word-level stand-in for a tokenizer: ids 0..3 are ``<pad> <unk> <s> </s>``, then one word per id."""

    pad_token_id, eos_token_id = 0, 3

    def __init__(self, size: int) -> None:
        self.vocab = ["<pad>", "<unk>", "<s>", "</s>", *(f"w{i}" for i in range(4, size))]

    def __len__(self) -> int:
        return len(self.vocab)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(self.vocab[i] for i in ids if not (skip_special_tokens and i < 4))


# ---------------------------------------------------------------------------------------------- shapes, masks


def test_shapes_and_conditioning() -> None:
    model = make().eval()
    src, mask, z, t = inputs(b=3, s=5, length=7)
    cond = model.encode(src, mask)
    assert isinstance(cond, Conditioning)
    assert isinstance(model.encoder, TransformerEncoder)
    assert cond.hidden.shape == (3, 5, HIDDEN)
    assert torch.equal(cond.mask, mask)
    out = model(z, t, cond)
    assert out.shape == (3, 7, LATENT)
    assert model.logits(out).shape == (3, 7, VOCAB)
    assert model.embed(src).shape == (3, 5, LATENT)
    assert model.hidden_dim == HIDDEN and model.latent_dim == LATENT
    # Explicit all-True target mask == no mask.
    torch.testing.assert_close(model(z, t, cond, torch.ones(3, 7, dtype=torch.bool)), out)


def test_output_depends_on_source_noise_and_time() -> None:
    model = make().eval()
    src, mask, z, t = inputs()
    with torch.no_grad():
        cond = model.encode(src, mask)
        base = model(z, t, cond)
        assert not torch.allclose(base, model(z, t + 7, cond))
        assert not torch.allclose(base, model(z + 0.5, t, cond))
        assert not torch.allclose(base, model(z, t, model.encode(src.flip(1), mask)))


def test_source_padding_is_ignored() -> None:
    model = make().eval()
    g = torch.Generator().manual_seed(1)
    short = torch.randint(5, VOCAB, (1, 3), generator=g)
    z = torch.randn(1, 4, LATENT, generator=g)
    t = torch.tensor([30])
    padded_mask = torch.tensor([[True, True, True, False, False]])
    with torch.no_grad():
        alone = model(z, t, model.encode(short, torch.ones(1, 3, dtype=torch.bool)))
        for filler in (0, 17):
            padded = torch.cat([short, torch.full((1, 2), filler)], dim=1)
            torch.testing.assert_close(
                model(z, t, model.encode(padded, padded_mask)), alone, rtol=1e-5, atol=1e-5
            )


@pytest.mark.parametrize("adaptive_norm", [False, True])
def test_masked_target_positions_do_not_affect_real_ones(adaptive_norm: bool) -> None:
    model = make(adaptive_norm=adaptive_norm).eval()
    if adaptive_norm:  # leave the zero init so that self-attention and FFN are live
        with torch.no_grad():
            for layer in model.layers:
                layer.modulation[1].weight.normal_(std=0.1)
    src, mask, z, t = inputs(b=2, length=6)
    tgt_mask = torch.tensor(
        [[True, True, True, True, False, False], [True, True, False, False, False, False]]
    )
    with torch.no_grad():
        cond = model.encode(src, mask)
        out = model(z, t, cond, tgt_mask)
        changed = z.clone()
        changed[~tgt_mask] = torch.randn(int((~tgt_mask).sum()), LATENT) * 5
        out2 = model(changed, t, cond, tgt_mask)
        torch.testing.assert_close(out2[tgt_mask], out[tgt_mask], rtol=1e-5, atol=1e-5)
        # A prefix of length 4 decoded alone gives the same outputs (no hidden dependence on canvas width).
        torch.testing.assert_close(
            model(z[:1, :4], t[:1], Conditioning(cond.hidden[:1], cond.mask[:1]))[0],
            out[0, :4],
            rtol=1e-5,
            atol=1e-5,
        )
        # Without the mask the real positions do see the others.
        unmasked = model(changed, t, cond)
        assert not torch.allclose(unmasked[tgt_mask], out[tgt_mask], atol=1e-4)


# ---------------------------------------------------------------------------------------------- adaLN-Zero


def test_adaptive_norm_layer_is_identity_plus_cross_attention_at_init() -> None:
    model = make(adaptive_norm=True).eval()
    src, mask, z, t = inputs()
    with torch.no_grad():
        cond = model.encode(src, mask)
        x = torch.randn(2, 6, HIDDEN)
        time = model.time_embedding(t)
        for layer in model.layers:
            assert layer.modulation is not None
            assert not layer.modulation[1].weight.any() and not layer.modulation[1].bias.any()
            expected = x + layer.cross_attn(layer.cross_norm(x), cond.hidden, cond.mask)
            torch.testing.assert_close(layer(x, None, cond.hidden, cond.mask, time), expected)
        # Time enters only through the (zero) modulation: at init the output does not depend on t ...
        torch.testing.assert_close(model(z, t, cond), model(z, t + 40, cond))
    # ... unlike the additive time embedding.
    additive = make(adaptive_norm=False).eval()
    with torch.no_grad():
        cond_a = additive.encode(src, mask)
        assert not torch.allclose(additive(z, t, cond_a), additive(z, t + 40, cond_a))
    with pytest.raises(ValueError, match="time_emb"):
        model.layers[0](torch.randn(2, 6, HIDDEN), None, cond.hidden, cond.mask, None)


def test_adaptive_norm_trains_its_modulation() -> None:
    model = make(adaptive_norm=True, dropout=0.0)
    src, mask, z, t = inputs()
    out = model(z, t, model.encode(src, mask))
    additive = make(adaptive_norm=False, dropout=0.0)  # same seed: same weights, except the time conditioning
    assert not torch.allclose(out, additive(z, t, additive.encode(src, mask)))
    (out**2).mean().backward()
    for layer in model.layers:
        grad = layer.modulation[1].weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert (
        model.time_embedding.mlp[0].weight.grad is None
        or model.time_embedding.mlp[0].weight.grad.abs().sum() == 0
    )
    # After a step on the modulation the output depends on t.
    with torch.no_grad():
        for layer in model.layers:
            layer.modulation[1].weight -= 10.0 * layer.modulation[1].weight.grad
    model.eval()
    with torch.no_grad():
        cond = model.encode(src, mask)
        assert not torch.allclose(model(z, t, cond), model(z, t + 40, cond))


def test_gradients_reach_every_parameter() -> None:
    model = make(dropout=0.0, self_conditioning=True, embedding_norm=True)
    src, mask, z, t = inputs()
    out = model(z, t, model.encode(src, mask), None, torch.randn_like(z))
    loss = (out**2).mean() + model.logits(model.embed(src)).logsumexp(-1).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if "position_embedding" not in name:
            assert p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------- options


def test_embedding_norm_and_scale() -> None:
    model = make(embedding_norm=True)
    with torch.no_grad():
        model.word_embedding.weight.mul_(3.0).add_(2.0)
    table = model.embedding_table()
    torch.testing.assert_close(table.mean(-1), torch.zeros(VOCAB), atol=1e-5, rtol=0)
    torch.testing.assert_close(table.var(-1, unbiased=False), torch.ones(VOCAB), atol=1e-3, rtol=0)
    ids = torch.tensor([[4, 9, 59]])
    torch.testing.assert_close(model.embed(ids)[0], table[ids[0]])
    z = torch.randn(1, 3, LATENT)
    torch.testing.assert_close(model.logits(z), z @ table.T)

    scaled = make(embedding_norm=True, embedding_scale=4.0)
    scaled.load_state_dict(model.state_dict())
    torch.testing.assert_close(scaled.embedding_table(), 4.0 * table)
    plain = make()
    assert plain.embedding_norm is None
    torch.testing.assert_close(plain.embedding_table(), plain.word_embedding.weight)


def test_dropout_only_in_train_mode() -> None:
    model = make(dropout=0.3)
    src, mask, z, t = inputs()
    with torch.no_grad():
        model.train()
        a = model(z, t, model.encode(src, mask))
        b = model(z, t, model.encode(src, mask))
        assert not torch.allclose(a, b)
        model.eval()
        c = model(z, t, model.encode(src, mask))
        d = model(z, t, model.encode(src, mask))
        assert torch.equal(c, d)
    no_dropout = make(dropout=0.0).train()
    with torch.no_grad():
        cond = no_dropout.encode(src, mask)
        assert torch.equal(no_dropout(z, t, cond), no_dropout(z, t, cond))


def test_max_positions_errors() -> None:
    model = make(max_positions=8).eval()
    src, mask, z, t = inputs(s=8, length=8)
    cond = model.encode(src, mask)  # exactly at the limit is fine
    assert model(z, t, cond).shape == (2, 8, LATENT)
    with pytest.raises(ValueError, match="max_positions"):
        model.encode(torch.ones(2, 9, dtype=torch.long), torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_positions"):
        model(torch.randn(2, 9, LATENT), t, cond)


def test_self_conditioning_input() -> None:
    model = make(self_conditioning=True).eval()
    assert model.input_proj[0].in_features == 2 * LATENT
    assert make().input_proj[0].in_features == LATENT
    src, mask, z, t = inputs()
    with torch.no_grad():
        cond = model.encode(src, mask)
        torch.testing.assert_close(
            model(z, t, cond, None, None), model(z, t, cond, None, torch.zeros_like(z))
        )
        assert not torch.allclose(model(z, t, cond), model(z, t, cond, None, torch.randn_like(z)))


# ---------------------------------------------------------------------------------------------- in the module


def test_generate_encodes_once_and_decodes_every_candidate_in_one_batch() -> None:
    steps, b = 4, 2
    tok = WordTokenizer(VOCAB)
    torch.manual_seed(0)
    module = DiffusionLM(
        denoiser=functools.partial(
            EncoderDecoderDenoiser, latent_dim=LATENT, hidden_dim=HIDDEN, encoder_layers=1, decoder_layers=1,
            num_heads=2, ffn_dim=64, dropout=0.0, max_positions=32,
        ),
        schedule=SqrtSchedule(50),
        loss_terms=[X0MSE(), AnchorNLL(), LengthNLL()],
        sampler=DDIMSampler(steps=steps),
        vocab_size=VOCAB,
        length_predictor=functools.partial(LengthPredictor, max_offset=3),
        length_beam=2,
        noise_beam=3,
        max_length=12,
    ).eval()  # fmt: skip
    module.attach_tokenizer(tok, "fake")
    encoder_calls: list[int] = []
    decoder_calls: list[tuple[int, int]] = []
    masks: list[Tensor | None] = []
    module.denoiser.encoder.register_forward_pre_hook(lambda _m, args: encoder_calls.append(args[0].shape[0]))

    def on_decoder(_m: nn.Module, args: tuple[Any, ...]) -> None:
        decoder_calls.append((args[0].shape[0], args[0].shape[1]))
        masks.append(args[3])

    module.denoiser.register_forward_pre_hook(on_decoder)
    src = torch.randint(5, VOCAB, (b, 5), generator=torch.Generator().manual_seed(0))
    src_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = module.generate(src, src_mask, torch.Generator().manual_seed(0))
    assert encoder_calls == [b]  # once for the whole sampling loop, not per step or per candidate
    assert len(decoder_calls) == steps == out.nfe
    assert all(rows == 6 * b for rows, _ in decoder_calls)
    assert out.candidates == 6 and out.calls_per_sentence == 6 * steps
    assert len(out.texts) == b
    # Every step sees the same per-candidate target mask: lengths from the predictor, 3 noise samples each.
    assert all(m is not None and torch.equal(m, masks[0]) for m in masks)
    lengths = masks[0].sum(-1)
    assert lengths.shape == (6 * b,)
    assert torch.equal(lengths.view(b, 2, 3), lengths.view(b, 2, 3)[:, :, :1].expand(-1, -1, 3))
    with torch.no_grad():
        expected = module.length_predictor.top_lengths(
            module.length_predictor(module.denoiser.encode(src, src_mask)), src_mask.sum(-1), 2, 12
        )
    assert torch.equal(lengths.view(b, 2, 3)[:, :, 0], expected)
    assert decoder_calls[0][1] == int(expected.max())
    # Training in length mode also encodes once per batch (and runs the decoder once, without self-conditioning).
    encoder_calls.clear()
    decoder_calls.clear()
    module.train()
    batch = Seq2SeqBatch(
        src_ids=src, src_mask=src_mask, index=torch.arange(b), src_text=["", ""],
        tgt_ids=torch.tensor([[5, 6, 3, 0], [7, 3, 0, 0]]), tgt_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool(),
    )  # fmt: skip
    loss, terms, _, _ = module.compute_losses(batch)
    assert encoder_calls == [b] and decoder_calls == [(b, 4)]
    assert set(terms) == {"mse", "anchor", "length"} and torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------- pretrained


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Tensor]]:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64,
    )  # fmt: skip
    bert = BertModel(config)
    path = tmp_path_factory.mktemp("bert")
    bert.save_pretrained(str(path))
    return path, {k: v.clone() for k, v in bert.state_dict().items()}


def test_pretrained_encoder_loads_local_weights_and_projects(
    bert_dir: tuple[Path, dict[str, Tensor]],
) -> None:
    path, saved = bert_dir
    model = make(pretrained_encoder=str(path), hidden_dim=48, dropout=0.0).eval()
    encoder = model.encoder
    assert isinstance(encoder, PretrainedEncoder)
    assert isinstance(encoder.proj, nn.Linear)
    assert (encoder.proj.in_features, encoder.proj.out_features) == (32, 48)
    loaded = encoder.model.state_dict()
    for key, value in saved.items():
        assert key in loaded, key
        assert torch.equal(loaded[key], value), key

    src, mask, z, t = inputs(b=2, s=5)
    mask[1, 3:] = False
    with torch.no_grad():
        cond = model.encode(src, mask)
        assert cond.hidden.shape == (2, 5, 48)
        reference = encoder.proj(encoder.model(input_ids=src, attention_mask=mask.long()).last_hidden_state)
        torch.testing.assert_close(cond.hidden, reference)
        # Padding is masked inside BERT too: the real positions of row 1 ignore the padded ids.
        other = src.clone()
        other[1, 3:] = 7
        torch.testing.assert_close(
            model.encode(other, mask).hidden[1, :3], cond.hidden[1, :3], rtol=1e-5, atol=1e-5
        )
        assert model(z, t, cond).shape == (2, 6, LATENT)

    # The encoder trains with the denoiser.
    model.train()
    out = model(z, t, model.encode(src, mask))
    out.pow(2).mean().backward()
    grad = encoder.model.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad.abs().sum() > 0

    same_width = make(pretrained_encoder=str(path), hidden_dim=32)
    assert isinstance(same_width.encoder.proj, nn.Identity)


def test_pretrained_encoder_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        make(pretrained_encoder=str(missing))
    with pytest.raises(FileNotFoundError):
        make(pretrained_encoder="bert-base-uncased")  # a hub name is not a local directory: never downloaded
