"""Small dataclasses that cross module borders.

Shapes use: B batch, S source length, L target (canvas) length, D latent width, H model width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
from torch import Tensor


@dataclass
class Seq2SeqBatch:
    """A padded batch of source/target pairs, as the data module's collate function builds it.

    Attributes:
        src_ids: ``[B, S]`` long, source token ids (no special tokens), right-padded with ``pad_id``.
        src_mask: ``[B, S]`` bool, True at real source tokens.
        index: ``[B]`` long, position of each example in its split (predictions are written in this order).
        src_text: the raw source strings, ``B`` of them.
        tgt_ids: ``[B, L]`` long, target tokens followed by one EOS, right-padded with ``pad_id``;
            None when the split has no targets (prediction on plain text).
        tgt_mask: ``[B, L]`` bool, True at target tokens and at the EOS; None with ``tgt_ids``.
        tgt_text: the raw (untokenized) reference strings, or None.
    """

    src_ids: Tensor
    src_mask: Tensor
    index: Tensor
    src_text: list[str]
    tgt_ids: Tensor | None = None
    tgt_mask: Tensor | None = None
    tgt_text: list[str] | None = None

    def __len__(self) -> int:
        return self.src_ids.shape[0]

    @property
    def has_targets(self) -> bool:
        return self.tgt_ids is not None

    def select(self, rows: list[int]) -> Seq2SeqBatch:
        """The examples at ``rows`` (in that order), padding columns no kept example uses trimmed away."""
        index = torch.tensor(rows, dtype=torch.long, device=self.src_ids.device)
        src_mask = self.src_mask.index_select(0, index)
        width = max(1, int(src_mask.sum(-1).max())) if rows else 1
        tgt_ids = tgt_mask = None
        if self.tgt_ids is not None and self.tgt_mask is not None:
            tgt_mask = self.tgt_mask.index_select(0, index)
            tgt_width = max(1, int(tgt_mask.sum(-1).max())) if rows else 1
            tgt_ids, tgt_mask = self.tgt_ids.index_select(0, index)[:, :tgt_width], tgt_mask[:, :tgt_width]
        return Seq2SeqBatch(
            src_ids=self.src_ids.index_select(0, index)[:, :width],
            src_mask=src_mask[:, :width],
            index=self.index.index_select(0, index.to(self.index.device)),
            src_text=[self.src_text[i] for i in rows],
            tgt_ids=tgt_ids,
            tgt_mask=tgt_mask,
            tgt_text=[self.tgt_text[i] for i in rows] if self.tgt_text is not None else None,
        )


@dataclass
class Conditioning:
    """What a denoiser computed once from the source, reused at every diffusion step.

    Attributes:
        hidden: ``[B, S, H]`` source states: embedded source (DiffuSeq) or encoder output (encoder-decoder).
        mask: ``[B, S]`` bool, True at real source positions.
        extras: further per-source tensors a denoiser subclass wants to carry (first dim ``B``).
    """

    hidden: Tensor
    mask: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)

    def repeat_interleave(self, n: int) -> Conditioning:
        """Repeat each source ``n`` times along the batch: ``[B, ...] -> [B*n, ...]`` (candidates stay adjacent)."""
        if n == 1:
            return self
        return replace(
            self,
            hidden=self.hidden.repeat_interleave(n, dim=0),
            mask=self.mask.repeat_interleave(n, dim=0),
            extras={k: v.repeat_interleave(n, dim=0) for k, v in self.extras.items()},
        )

    def select(self, rows: Tensor) -> Conditioning:
        """The rows ``rows`` ``[B']`` (long indices, in this order) of every tensor: ``[B, ...] -> [B', ...]``."""
        return replace(
            self,
            hidden=self.hidden.index_select(0, rows),
            mask=self.mask.index_select(0, rows),
            extras={k: v.index_select(0, rows) for k, v in self.extras.items()},
        )

    def with_null(self, null: Tensor, drop: Tensor) -> Conditioning:
        """The rows ``drop`` ``[B]`` (bool) replaced by the null condition (classifier-free guidance, Ho & Salimans
        2022): ``hidden[i] = [null, 0, ..., 0]`` ``[S, H]`` and ``mask[i] = [True, False, ..., False]``; the other
        rows and ``extras`` are kept as they are. ``null`` ``[H]`` gets gradients through the dropped rows."""
        b, s, h = self.hidden.shape
        null_hidden = torch.cat([null.to(self.hidden.dtype).expand(b, 1, h), self.hidden.new_zeros(b, s - 1, h)], dim=1)
        null_mask = torch.zeros_like(self.mask)
        null_mask[:, 0] = True
        return replace(
            self,
            hidden=torch.where(drop[:, None, None], null_hidden, self.hidden),
            mask=torch.where(drop[:, None], null_mask, self.mask),
        )

    def concat(self, other: Conditioning) -> Conditioning:
        """``[self; other]`` along the batch: ``[B, ...] + [B', ...] -> [B + B', ...]`` (same ``S`` and extras keys)."""
        return replace(
            self,
            hidden=torch.cat([self.hidden, other.hidden]),
            mask=torch.cat([self.mask, other.mask]),
            extras={k: torch.cat([v, other.extras[k]]) for k, v in self.extras.items()},
        )


@dataclass
class LossInputs:
    """Everything a loss term may look at for one training batch.

    Attributes:
        z0: ``[B, L, D]`` clean target embeddings ``Emb(y)``.
        x0_hat: ``[B, L, D]`` the denoiser's estimate of ``z0`` from ``z_t``.
        target_ids: ``[B, L]`` long, the target canvas ids ``y``.
        mask: ``[B, L]`` bool, positions that count in the loss.
        t: ``[B]`` long, the sampled timesteps (1..T).
        alpha_bar_final: ``[B, L]`` the schedule's signal level at the last step ``T``.
        logits: maps latents ``[..., D]`` to the tied rounding head's logits ``[..., V']`` (loss terms call it on the
            ``[N, D]`` loss positions only); with an output vocabulary (``Denoiser.kept_logits``) its columns are that
            vocabulary's ids, so targets are compared as :attr:`target_columns`, never as raw ids.
        length_logits: ``[B, C]`` length-offset logits when the model has a length predictor, else None.
        length_targets: ``[B]`` long, the true offset classes, with ``length_logits``.
        alpha_bar_t: ``[B, L]`` the signal level ``abar_t`` at each example's sampled step (e.g. for SNR
            weighting, ``snr = abar_t / (1 - abar_t)``); None only when built by hand.
        embedding_table: returns ``[V, D]``, the (normalized) word embeddings the rounding head scores against
            (a function, so terms that don't need it cost nothing).
        prediction_logits: ``[B, L, V]`` the denoiser's own token logits, from which its ``x0_hat`` was made (CDCD's
            score interpolation, ``Denoiser.predict``); None for denoisers that predict latents.
        source_x0: ``[B, S, D]`` the denoiser's output at the source positions (``DenoiserOutput.source_x0``), or
            None when the denoiser does not run the source through its network.
        source_z0: ``[B, S, D]`` the source embeddings ``Emb(x)`` (what ``source_x0`` should reproduce), with it.
        source_mask: ``[B, S]`` bool, the real source positions, with it.
        columns: token ids (any shape) -> columns of ``logits`` (``-100`` for an id the head cannot emit; the
            identity without an output vocabulary).
    """

    z0: Tensor
    x0_hat: Tensor
    target_ids: Tensor
    mask: Tensor
    t: Tensor
    alpha_bar_final: Tensor
    logits: Callable[[Tensor], Tensor]
    length_logits: Tensor | None = None
    length_targets: Tensor | None = None
    alpha_bar_t: Tensor | None = None
    embedding_table: Callable[[], Tensor] | None = None
    prediction_logits: Tensor | None = None
    source_x0: Tensor | None = None
    source_z0: Tensor | None = None
    source_mask: Tensor | None = None
    columns: Callable[[Tensor], Tensor] = lambda ids: ids

    @cached_property
    def target_columns(self) -> Tensor:
        """``[B, L]`` long: :attr:`target_ids` as columns of :attr:`logits` (``-100`` where the head cannot emit the
        id: evaluation targets only, the training targets fitted the vocabulary)."""
        return self.columns(self.target_ids)

    @cached_property
    def x0_hat_logits(self) -> Tensor:
        """``[N, V']`` the head's logits of ``x0_hat`` at the ``N`` loss positions (row-major; computed once, shared
        by the terms that read the prediction through the head)."""
        return self.logits(self.x0_hat[self.mask])


@dataclass
class SampleOutput:
    """What a sampler returns.

    Attributes:
        latents: ``[B, L, D]`` the final clean estimate ``z_0``.
        token_ids: ``[B, L]`` long, the rounded tokens (argmax of the tied head).
        nfe: denoiser calls made per sequence (number of sampling steps).
    """

    latents: Tensor
    token_ids: Tensor
    nfe: int


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` ``[B, L]`` over ``mask`` ``[B, L]`` per example -> ``[B]`` (0 where a row is empty)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def scatter_rows(rows: Tensor, positions: Tensor) -> Tensor:
    """Per-position values ``[B, L]`` from values ``[N]`` of the ``N`` True ``positions`` ``[B, L]`` in row-major
    order (the order of ``x[positions]``), 0 elsewhere: losses computed on selected rows only, put back in place."""
    return rows.new_zeros(positions.shape).masked_scatter(positions, rows)


__all__ = ["Conditioning", "LossInputs", "SampleOutput", "Seq2SeqBatch", "masked_mean", "scatter_rows"]
