"""Tiny continuous models for unit tests: an id tokenizer, encoder-only / encoder-decoder denoisers of width 16, a
module factory, a recorder of denoiser calls and a small batch (shared by the self-conditioning, unrolled denoising and
chain trace tests)."""

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
from lightning_diffusion.samplers import DDIMSampler
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
