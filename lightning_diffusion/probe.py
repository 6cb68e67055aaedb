"""Denoising probe: does the denoiser learn, independently of how well a sampler walks the chain?

The true target is noised to a chosen step ``t`` exactly as in training (same canvas and padding rule, same
``train_noise_factor``), the denoiser predicts ``x0`` once, and the prediction is rounded to tokens two ways
(the tied head's argmax, as the samplers' final rounding does, and the nearest word embedding, as clamping
does). Word accuracy against the true target at small ``t`` tells whether training works long before BLEU of
sampled outputs rises above noise level; accuracy at large ``t`` shows how much the source alone determines.

    rows = denoising_probe(module, batches, steps=[1, 100, 500, 1000, 2000])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_diffusion.module import DiffusionLM
from lightning_diffusion.samplers.rounding import nearest_token_ids, round_to_tokens
from lightning_diffusion.types import Seq2SeqBatch


@dataclass(frozen=True)
class ProbeRow:
    """The probe's result at one step ``t``.

    Attributes:
        t: diffusion step the true target was noised to (``1..T``).
        tokens: real target positions counted: every target token and its EOS, never padding.
        token_accuracy_argmax: fraction of those positions where ``argmax(logits(x0_hat))`` is the true token.
        token_accuracy_nearest: the same with the nearest word embedding to ``x0_hat`` (squared L2).
        canvas_accuracy: canvas models (no length predictor): argmax accuracy over every canvas position,
            padding included (the model must also produce the padding); None for models with a length predictor.
        mse: ``||x0_hat - z0||^2`` averaged over the latent width and the real target positions (as ``X0MSE``
            for a length-predictor model; a canvas model's training loss also averages over the padding).
    """

    t: int
    tokens: int
    token_accuracy_argmax: float
    token_accuracy_nearest: float
    canvas_accuracy: float | None
    mse: float


def probe_steps(steps: Iterable[int], num_steps: int) -> list[int]:
    """``steps`` clipped to the schedule's ``T`` (``num_steps``), deduplicated and sorted; each must be >= 1."""
    chosen = set()
    for t in steps:
        if t < 1:
            raise ValueError(f"probe steps must be >= 1 (the denoiser is trained on t in 1..T), got {t}")
        chosen.add(min(int(t), num_steps))
    if not chosen:
        raise ValueError("no probe steps given")
    return sorted(chosen)


def uses_self_conditioning(module: DiffusionLM, self_condition: bool = True) -> bool:
    """Whether the probe runs the two-pass self-conditioned estimate: asked for and the denoiser has it."""
    return self_condition and bool(module.denoiser.self_conditioning)


def _to_device(batch: Seq2SeqBatch, device: torch.device) -> Seq2SeqBatch:
    assert batch.tgt_ids is not None and batch.tgt_mask is not None
    return dataclasses.replace(
        batch,
        src_ids=batch.src_ids.to(device),
        src_mask=batch.src_mask.to(device),
        tgt_ids=batch.tgt_ids.to(device),
        tgt_mask=batch.tgt_mask.to(device),
    )


def probe_targets(module: DiffusionLM, batch: Seq2SeqBatch) -> tuple[Tensor, Tensor, Tensor | None]:
    """The training targets of a batch (the rule of ``DiffusionLM.compute_losses``).

    Returns:
        ``target`` ``[B, L]`` ids the denoiser is trained to reproduce (a canvas model: the target, its EOS and
        padding up to the canvas length; a length-predictor model: the collated target), ``real`` ``[B, L]``
        bool at target tokens and EOS, and the denoiser's ``attention_mask`` ``[B, L]`` (None on a canvas).
    """
    assert batch.tgt_ids is not None and batch.tgt_mask is not None
    if module.length_predictor is None:
        target = module._pad_canvas(batch)  # [B, L], L >= the batch's decoding canvas
        real = torch.zeros_like(target, dtype=torch.bool)
        real[:, : batch.tgt_mask.shape[1]] = batch.tgt_mask
        return target, real, None
    return batch.tgt_ids, batch.tgt_mask, batch.tgt_mask


@torch.no_grad()
def denoising_probe(
    module: DiffusionLM,
    batches: Iterable[Seq2SeqBatch],
    steps: Sequence[int],
    seed: int = 0,
    self_condition: bool = True,
    chunk_rows: int | None = None,
) -> list[ProbeRow]:
    """Noise each batch's true target to every ``t`` in ``steps`` and score the denoiser's one-shot ``x0``.

    For each batch (with targets) and step ``t``: ``z0 = embed(target)`` ``[B, L, D]``,
    ``z_t = q_sample(z0, t, eps, train_noise_factor)``, ``x0_hat = denoiser(z_t, t, encode(src), mask)``
    ``[B, L, D]``, rounded to ids ``[B, L]`` by the tied head's argmax and by the nearest word embedding.
    With a self-conditioning denoiser (and ``self_condition``), ``x0_hat`` is the second of two passes, the
    first without self-conditioning, as a sampler's first step feeds its estimate to the next (here at the
    same ``t``); without one, one pass with no self-conditioning input.

    Deterministic given ``seed``: the noise ``eps`` comes from a ``torch.Generator`` seeded with ``seed``, one
    per step, so every ``t`` sees the same noise draws (common random numbers across ``t``). The module is put
    in eval mode for the probe (dropout off) and its previous mode restored; nothing is updated.

    Args:
        module: a :class:`DiffusionLM` with its tokenizer's special ids (pad) attached.
        batches: collated :class:`Seq2SeqBatch` es with targets (e.g. a data module's ``test_dataloader()``).
        steps: diffusion steps; clipped to ``T``, deduplicated and sorted (:func:`probe_steps`).
        seed: seed of the noise.
        self_condition: use the two-pass estimate when the denoiser was built with self-conditioning.
        chunk_rows: positions rounded at once (see :mod:`~lightning_diffusion.samplers.rounding`).

    Returns:
        one :class:`ProbeRow` per step, in increasing ``t``.
    """
    chosen = probe_steps(steps, module.schedule.num_steps)
    two_pass = uses_self_conditioning(module, self_condition)
    was_training = module.training
    module.eval()
    device = module.device
    generators = {t: torch.Generator(device=device).manual_seed(seed) for t in chosen}
    zeros = {"tokens": 0, "argmax": 0, "nearest": 0, "canvas": 0, "canvas_positions": 0, "sq_err": 0.0}
    totals = {t: dict(zeros) for t in chosen}
    try:
        denoiser = module.denoiser
        table = denoiser.kept_table()  # [V', D]: the words the head can emit
        for raw in batches:
            if raw.tgt_ids is None or raw.tgt_mask is None:
                raise ValueError("the probe needs batches with targets")
            batch = _to_device(raw, device)
            cond = denoiser.encode(batch.src_ids, batch.src_mask)
            target, real, attention_mask = probe_targets(module, batch)  # [B, L], [B, L], [B, L] | None
            z0 = denoiser.embed(target)  # [B, L, D]
            t_shape = (target.shape[0],)
            for t in chosen:
                noise = torch.randn(z0.shape, generator=generators[t], device=device, dtype=z0.dtype)
                t_vec = torch.full(t_shape, t, dtype=torch.long, device=device)  # [B]
                z_t = module.schedule.q_sample(z0, t_vec, noise, module.train_noise_factor)
                x0_hat = denoiser(z_t, t_vec, cond, attention_mask, None)
                if two_pass:
                    x0_hat = denoiser(z_t, t_vec, cond, attention_mask, x0_hat)
                argmax_ids = round_to_tokens(denoiser, x0_hat, chunk_rows)  # [B, L]
                nearest_ids = denoiser.kept_ids(nearest_token_ids(x0_hat, table, chunk_rows))  # [B, L]
                sq_err = ((x0_hat - z0) ** 2).mean(-1)  # [B, L]
                total = totals[t]
                total["tokens"] += int(real.sum())
                total["argmax"] += int(((argmax_ids == target) & real).sum())
                total["nearest"] += int(((nearest_ids == target) & real).sum())
                total["canvas"] += int((argmax_ids == target).sum())
                total["canvas_positions"] += target.numel()
                total["sq_err"] += float(sq_err[real].sum())
    finally:
        module.train(was_training)
    if totals[chosen[0]]["tokens"] == 0:
        raise ValueError("the probe got no target tokens (no batches?)")
    canvas = module.length_predictor is None
    rows = []
    for t in chosen:
        total = totals[t]
        n = total["tokens"]
        rows.append(
            ProbeRow(
                t=t,
                tokens=total["tokens"],
                token_accuracy_argmax=total["argmax"] / n,
                token_accuracy_nearest=total["nearest"] / n,
                canvas_accuracy=total["canvas"] / total["canvas_positions"] if canvas else None,
                mse=total["sq_err"] / n,
            )
        )
    return rows


__all__ = [
    "ProbeRow",
    "denoising_probe",
    "nearest_token_ids",
    "probe_steps",
    "probe_targets",
    "uses_self_conditioning",
]
