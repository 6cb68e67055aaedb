"""Chain trace: what each step of the sampling chain changes in the tokens, and where repeated words appear.

The denoising probe (:mod:`lightning_diffusion.probe`) asks whether the denoiser learnt; this asks whether the
sampler's chain *uses* it. Decoding runs as usual (``DiffusionLM.generate``); at every denoiser call the estimate
``x0_hat`` is rounded to tokens (the tied head's argmax, as the final rounding does) and scored against the chain's
last estimate and for back-to-back repeated tokens. The last estimate is the chain's output wherever the last update
lands on ``x0_hat`` (DDIM, ancestral and DPM-Solver++ into step 0 without clamping); with clamping the output is its
nearest word embedding instead. A chain whose first estimate, from pure noise,
already holds nearly all of its final tokens decodes in one shot: more steps cannot help it, and what it repeats at
step 1 it keeps.

    rows = chain_trace(module, batches, decoding)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_diffusion.decoding import Decoding
from lightning_diffusion.denoisers.base import Denoiser
from lightning_diffusion.module import DiffusionLM
from lightning_diffusion.samplers.rounding import round_to_tokens
from lightning_diffusion.types import Seq2SeqBatch


@dataclass(frozen=True)
class ChainStepRow:
    """Totals over every candidate chain at one sampler step.

    Attributes:
        step: 1-based index of the denoiser call in the chain.
        t: the step label of that call (in the first chain; chains of other lengths may differ with logSNR spacing).
        sequences: candidate chains counted.
        repeated_sequences: chains whose rounded estimate repeats a token back to back at counted positions (end
            and padding tokens never count as a repeat).
        positions: positions counted: those of the hypothesis, before the last estimate's first end token (where
            decoding cuts it) and not padding, within the predicted length.
        changed_positions: of those, positions whose token differs from the chain's last estimate (its output, see
            the module docstring).
    """

    step: int
    t: int
    sequences: int
    repeated_sequences: int
    positions: int
    changed_positions: int

    @property
    def repeated_share(self) -> float:
        """``repeated_sequences / sequences``."""
        return self.repeated_sequences / max(1, self.sequences)

    @property
    def changed_share(self) -> float:
        """``changed_positions / positions``."""
        return self.changed_positions / max(1, self.positions)


class _Recorder:
    """A forward hook on the denoiser: keeps ``(t, ids [B, L], mask [B, L] | None)`` per call."""

    def __init__(self, denoiser: Denoiser, chunk_rows: int | None) -> None:
        self.denoiser = denoiser
        self.chunk_rows = chunk_rows
        self.calls: list[tuple[int, Tensor, Tensor | None]] = []

    def __call__(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> None:
        t = args[1] if len(args) > 1 else kwargs["t"]
        mask = args[3] if len(args) > 3 else kwargs.get("tgt_mask")
        ids = round_to_tokens(self.denoiser, output.detach(), self.chunk_rows)
        self.calls.append((int(t.flatten()[0]), ids, mask))


def _chains(calls: list[tuple[int, Tensor, Tensor | None]]) -> list[list[tuple[int, Tensor, Tensor | None]]]:
    """Split the calls of one ``generate`` into chains: a chain's labels strictly decrease, a new one starts higher."""
    chains: list[list[tuple[int, Tensor, Tensor | None]]] = []
    for call in calls:
        if not chains or call[0] >= chains[-1][-1][0]:
            chains.append([])
        chains[-1].append(call)
    return chains


def hypothesis_positions(final: Tensor, mask: Tensor | None, eos: int, pad: int) -> Tensor:
    """``[B, L]`` bool: the positions of the hypothesis the output ``final`` ``[B, L]`` decodes to: before its first
    end token (where decoding cuts it), not padding, and inside ``mask`` (the predicted lengths) when given."""
    counted = ((final == eos).long().cumsum(-1) == 0) & (final != pad)
    return counted if mask is None else counted & mask


def _has_repeat(ids: Tensor, counted: Tensor) -> Tensor:
    """``[B]`` bool: a token equal to its left neighbour where both positions count."""
    same = (ids[:, 1:] == ids[:, :-1]) & counted[:, 1:] & counted[:, :-1]
    return same.any(-1)


@torch.no_grad()
def chain_trace(
    module: DiffusionLM,
    batches: Iterable[Seq2SeqBatch],
    decoding: Decoding | None = None,
    seed: int = 0,
    chunk_rows: int | None = None,
) -> list[ChainStepRow]:
    """Decode every batch with ``decoding`` (default: the model's) and total, per sampler step, the chains whose
    rounded estimate repeats a token and the positions where it differs from the chain's last estimate.

    Args:
        module: a :class:`DiffusionLM` with its tokenizer's special ids attached.
        batches: collated batches (sources; targets unused).
        decoding: the decoding to trace; every chain of it (length groups, candidates) is counted.
        seed: seed of the decoding noise (one generator per batch, as the benchmarks decode).
        chunk_rows: positions rounded at once (see :mod:`~lightning_diffusion.samplers.rounding`).

    Returns:
        one :class:`ChainStepRow` per step, in chain order.
    """
    chosen = decoding if decoding is not None else module.decoding
    if chosen.guidance is not None:
        raise ValueError("chain_trace: trace an unguided decoding (guidance calls the denoiser twice per step)")
    special = module.special_ids
    recorder = _Recorder(module.denoiser, chunk_rows)
    was_training = module.training
    module.eval()
    handle = module.denoiser.register_forward_hook(recorder, with_kwargs=True)
    totals: dict[int, list[int]] = {}
    try:
        for batch in batches:
            recorder.calls.clear()
            generator = torch.Generator(device=module.device).manual_seed(seed)
            module.generate(batch.src_ids.to(module.device), batch.src_mask.to(module.device), generator, None, decoding)
            for chain in _chains(recorder.calls):
                final = chain[-1][1]
                mask = chain[-1][2]
                counted = hypothesis_positions(final, mask, special.eos, special.pad)
                for step, (t, ids, _) in enumerate(chain, start=1):
                    row = totals.setdefault(step, [t, 0, 0, 0, 0])
                    row[1] += ids.shape[0]
                    row[2] += int(_has_repeat(ids, counted & (ids != special.eos) & (ids != special.pad)).sum())
                    row[3] += int(counted.sum())
                    row[4] += int(((ids != final) & counted).sum())
    finally:
        handle.remove()
        module.train(was_training)
    if not totals:
        raise ValueError("the chain trace decoded nothing (no batches?)")
    return [ChainStepRow(step, *values) for step, values in sorted(totals.items())]


def as_dicts(rows: list[ChainStepRow]) -> list[dict[str, Any]]:
    """Rows with their shares, for JSON."""
    return [dict(dataclasses.asdict(r), repeated_share=r.repeated_share, changed_share=r.changed_share) for r in rows]


__all__ = ["ChainStepRow", "as_dicts", "chain_trace", "hypothesis_positions"]
