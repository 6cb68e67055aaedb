"""Masking probe for the discrete family: does the denoiser learn, independently of how a sampler decodes?

The true target is corrupted at a chosen time ``t`` exactly as in training (same canvas / length rule, the
model's corruption and schedule), the denoiser predicts ``x0`` once, and its argmax is compared with the target
on the corrupted positions (what the model must infer) and on every real position (corrupted ones predicted,
the rest carried over, as a sampler's last step would).

    rows = masking_probe(module, batches, times=[0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from lightning_diffusion.discrete.model import DiscreteDiffusionLM
from lightning_diffusion.types import Seq2SeqBatch


@dataclass(frozen=True)
class MaskingProbeRow:
    """The probe at one time ``t``.

    Attributes:
        t: the corruption time in ``(0, 1]``.
        corrupted: real target positions that were corrupted (masked or replaced), counted.
        accuracy_corrupted: share of those where the denoiser's argmax is the true token.
        accuracy_all: share of all real target positions right after carrying clean ones over.
    """

    t: float
    corrupted: int
    accuracy_corrupted: float
    accuracy_all: float


@torch.no_grad()
def masking_probe(
    module: DiscreteDiffusionLM, batches: Iterable[Seq2SeqBatch], times: Sequence[float], seed: int = 0
) -> list[MaskingProbeRow]:
    """Corrupt each batch's target at every ``t`` in ``times`` and score the one-shot prediction (eval mode,
    restored after; the corruption draws come from a generator seeded with ``seed``, one per ``t``)."""
    chosen = sorted({float(t) for t in times})
    if not chosen or chosen[0] <= 0 or chosen[-1] > 1:
        raise ValueError(f"probe times must be in (0, 1], got {list(times)}")
    was_training = module.training
    module.eval()
    device = module.device
    generators = {t: torch.Generator(device=device).manual_seed(seed) for t in chosen}
    totals = {t: [0, 0, 0, 0] for t in chosen}  # corrupted, right among corrupted, real, right among real
    try:
        for raw in batches:
            if raw.tgt_ids is None or raw.tgt_mask is None:
                raise ValueError("the probe needs batches with targets")
            batch = dataclasses.replace(
                raw, src_ids=raw.src_ids.to(device), src_mask=raw.src_mask.to(device),
                tgt_ids=raw.tgt_ids.to(device), tgt_mask=raw.tgt_mask.to(device),
            )  # fmt: skip
            assert batch.tgt_ids is not None and batch.tgt_mask is not None
            cond = module.denoiser.encode(batch.src_ids, batch.src_mask)
            target, real, attention_mask = module.training_targets(batch)
            for t in chosen:
                t_vec = torch.full((target.shape[0],), t, device=device)
                alpha = module.schedule.alpha(t_vec, target).expand_as(target)
                x_t = module.corruption.sample(target, alpha, module.vocab_size, generators[t])
                if attention_mask is not None:
                    x_t = torch.where(attention_mask, x_t, target)
                predicted = module.denoiser(x_t, t_vec, cond, attention_mask).argmax(-1)
                corrupted = (x_t != target) & real
                filled = torch.where(x_t != target, predicted, target)
                total = totals[t]
                total[0] += int(corrupted.sum())
                total[1] += int(((predicted == target) & corrupted).sum())
                total[2] += int(real.sum())
                total[3] += int(((filled == target) & real).sum())
    finally:
        module.train(was_training)
    return [
        MaskingProbeRow(t=t, corrupted=c, accuracy_corrupted=rc / max(c, 1), accuracy_all=rr / max(r, 1))
        for t, (c, rc, r, rr) in totals.items()
    ]


__all__ = ["MaskingProbeRow", "masking_probe"]
