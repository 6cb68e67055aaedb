"""GLAT's glancing sampling: how many true tokens are revealed, where, and the model's training step with it."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch

from lightning_diffusion import DiscreteDiffusionLM
from lightning_diffusion.data import tokenizer_fingerprint
from lightning_diffusion.discrete import (
    CosineMasking,
    EncoderDecoderTokenDenoiser,
    Glancing,
    MaskPredictSampler,
    ReweightedCrossEntropy,
    UniformCorruption,
)
from lightning_diffusion.length import LengthPredictor
from lightning_diffusion.losses import LengthNLL

ENC_DEC = functools.partial(
    EncoderDecoderTokenDenoiser, hidden_dim=32, encoder_layers=1, decoder_layers=1, num_heads=2, ffn_dim=64, dropout=0.0, max_positions=128
)


def test_reveals_ceil_ratio_times_the_wrong_tokens_among_scored_positions() -> None:
    target = torch.arange(20).reshape(2, 10)
    picks = target.clone()
    picks[0, :7] = 99  # 7 wrong in row 0
    picks[1, :] = 99  # 10 wrong in row 1, but only 6 positions scored
    scored = torch.ones(2, 10, dtype=torch.bool)
    scored[1, 6:] = False
    keep = Glancing(ratio=0.5).revealed(picks, target, scored, step=0, generator=torch.Generator().manual_seed(0))
    assert keep.sum(-1).tolist() == [math.ceil(0.5 * 7), math.ceil(0.5 * 6)]
    assert not bool((keep & ~scored).any())  # never an unscored (padding) position
    perfect = Glancing(ratio=0.5).revealed(target, target, scored, step=0)
    assert not bool(perfect.any())  # a model that is right everywhere gets the fully corrupted target


def test_revealed_positions_are_random() -> None:
    target = torch.zeros(1, 40, dtype=torch.long)
    scored = torch.ones(1, 40, dtype=torch.bool)
    glancing = Glancing(ratio=0.25)
    hits = sum(glancing.revealed(target + 1, target, scored, 0, torch.Generator().manual_seed(s)).float() for s in range(400))
    assert hits.sum() == 400 * 10
    assert float(hits.min()) > 50 and float(hits.max()) < 150  # each position ~100 times of 400


def test_ratio_anneals_linearly_and_bad_settings_are_errors() -> None:
    glancing = Glancing(ratio=0.5, final_ratio=0.3, anneal_steps=100)
    assert [glancing.ratio_at(s) for s in (0, 50, 100, 1000)] == pytest.approx([0.5, 0.4, 0.3, 0.3])
    assert Glancing(0.4).ratio_at(10**6) == 0.4
    with pytest.raises(ValueError, match="ratio"):
        Glancing(ratio=1.5)
    with pytest.raises(ValueError, match="anneal_steps"):
        Glancing(final_ratio=0.3)
    with pytest.raises(ValueError, match="probability"):
        Glancing(probability=-0.1)
    assert "0.5 -> 0.3 over 100 steps" in glancing.describe()


def make(tok: Any, **kwargs: Any) -> DiscreteDiffusionLM:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        denoiser=ENC_DEC, sampler=MaskPredictSampler(steps=3), vocab_size=len(tok), schedule=CosineMasking(),
        loss_terms=[ReweightedCrossEntropy(floor=1.0), LengthNLL()], length_predictor=functools.partial(LengthPredictor, max_offset=8),
    )  # fmt: skip
    options.update(kwargs)
    module = DiscreteDiffusionLM(**options)
    module.attach_tokenizer(tok, tokenizer_fingerprint(tok))
    return module


def test_glanced_training_state_reveals_half_the_first_pass_errors(tok: Any, batch: Any) -> None:
    module = make(tok, glancing=Glancing(ratio=0.5))
    module.train()
    target, real, attention_mask = module.training_targets(batch)
    cond = module.denoiser.encode(batch.src_ids, batch.src_mask)
    b = target.shape[0]
    x_t, t = module._glance(target, torch.full_like(target, module.denoiser.mask_id), torch.full((b,), 0.5), cond, attention_mask, real)
    kept = (x_t == target) & real
    masked = (x_t == module.denoiser.mask_id) & real
    assert bool((kept | masked)[real].all())  # every real position is either the true token or [MASK]
    with torch.no_grad():  # the untrained model is wrong almost everywhere: about half of each target is revealed
        prior = torch.where(attention_mask, torch.full_like(target, module.denoiser.mask_id), target)
        wrong = ((module.denoiser(prior, torch.ones(b), cond, attention_mask).argmax(-1) != target) & real).sum(-1)
    assert kept.sum(-1).tolist() == [math.ceil(0.5 * int(w)) for w in wrong]
    share = masked.sum(-1).float() / real.sum(-1).float()
    assert torch.allclose(t, (2 / math.pi) * torch.asin(share), atol=1e-5)  # the cosine schedule's time of that share


def test_a_glancing_model_trains_and_evaluation_is_unchanged(tok: Any, batch: Any) -> None:
    for kwargs in (dict(glancing=Glancing()), dict(glancing=Glancing(probability=0.5), corruption=UniformCorruption())):
        module = make(tok, **kwargs)
        module.train()
        loss, _ = module.compute_losses(batch)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in module.parameters())
    torch.manual_seed(3)
    plain = make(tok).eval().compute_losses(batch)[0]
    torch.manual_seed(3)
    glanced = make(tok, glancing=Glancing()).eval().compute_losses(batch)[0]
    assert plain.item() == glanced.item()  # validation loss: the diffusion objective, no glancing
