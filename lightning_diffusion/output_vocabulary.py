"""The output head over the training targets' vocabulary only (a target dictionary over a joined BPE)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_diffusion.arguments import check_at_least


class OutputVocabulary(nn.Module):
    """The token ids an output head scores: those seen at least ``min_count`` times in the training targets.

    Source and target share one tokenizer (and the tied embedding), so a translation model's ``[N, H] x [H, V]``
    head spends most of its work on source-language pieces it never has to predict: on Multi30k En->De with the
    10,000-piece joint vocabulary the (distilled) German targets use 3,904 ids (EOS and padding included). Fairseq gets the same effect from a
    separate target dictionary. With ``V'`` kept ids the head computes ``[N, V']`` and returns ``[N, V]`` logits
    holding ``-inf`` at the other ids (softmax probability exactly 0, never drawn, never argmax), so every loss,
    sampler and search reads the usual ``[..., V]`` shape. (A large finite fill such as ``-1e4`` would be as exact
    but slow: ``exp`` of arguments below about -88 takes a slow path on x86 CPUs, ~10x the time of ``exp(-inf)``,
    and every softmax over the fill paid it.) A term that multiplies probabilities by log-probabilities over the
    whole vocabulary must use ``torch.special.xlogy`` (``0 * -inf`` is NaN); label smoothing must average over the
    kept ids (the losses read :meth:`kept_logits`, whose columns are exactly those). Gradients reach the kept rows of the embedding only (the dropped rows still learn as
    source and input embeddings).

    The ids are data statistics: fitted once before training from the training targets' token counts (the model
    does it in ``on_fit_start``), stored as a buffer, so checkpoints, exports and resumed runs carry them. An
    unfitted vocabulary (a model built but never trained) scores every id.

    Args:
        min_count: keep ids seen at least this many times in the training targets (1 = every id seen).
    """

    def __init__(self, min_count: int = 1) -> None:
        super().__init__()
        check_at_least("OutputVocabulary", 1, min_count=min_count)
        self.min_count = min_count
        self.register_buffer("ids", torch.zeros(0, dtype=torch.long))  # [V'] sorted, empty until fit()

    @property
    def fitted(self) -> bool:
        return self.ids.numel() > 0

    def fit(self, token_counts: Tensor, keep: Iterable[int] = ()) -> None:
        """Keep the ids with ``token_counts[id] >= min_count`` (``[V]``, the training targets' counts) and the
        ``keep`` ids (end and padding tokens a model must be able to emit)."""
        counts = token_counts.flatten()
        chosen = counts >= self.min_count
        for index in keep:
            if not 0 <= index < counts.numel():
                raise ValueError(f"OutputVocabulary: keep id {index} is outside the vocabulary of {counts.numel()}")
            chosen[index] = True
        if not bool(chosen.any()):
            raise ValueError(f"OutputVocabulary: no token id occurs {self.min_count}+ times in the training targets")
        self.ids = chosen.nonzero().flatten().to(self.ids.device)

    def logits(self, hidden: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``[..., H]`` -> ``[..., V]``: ``hidden @ weight[ids].T (+ bias[ids])`` at the kept ids, ``-inf`` elsewhere
        (``weight`` ``[V, H]``, ``bias`` ``[V]``); the full ``F.linear`` while unfitted."""
        return self.expand(self.kept_logits(hidden, weight, bias), weight.shape[0])

    def expand(self, kept: Tensor, vocab_size: int) -> Tensor:
        """Logits of the kept ids ``[..., V']`` -> ``[..., V]`` holding ``-inf`` at the other ids (unchanged while
        unfitted)."""
        if not self.fitted:
            return kept
        out = kept.new_full((*kept.shape[:-1], vocab_size), float("-inf"))
        return out.index_copy(-1, self.ids, kept)

    def kept_logits(self, hidden: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``[..., H]`` -> ``[..., V']``: the logits of the kept ids only, column ``k`` for id ``ids[k]`` (all ``V``
        ids while unfitted). What training losses read: no ``[N, V]`` tensor is built (scattering into one cost
        more than the smaller product saved)."""
        if not self.fitted:
            return F.linear(hidden, weight, bias)
        return F.linear(hidden, weight.index_select(0, self.ids), None if bias is None else bias.index_select(0, self.ids))

    def columns(self, token_ids: Tensor) -> Tensor:
        """Token ids (any shape) -> their columns in :meth:`kept_logits`; ``-100`` (cross-entropy's ignore
        index) for a dropped id. Identity while unfitted."""
        if not self.fitted:
            return token_ids
        index = torch.searchsorted(self.ids, token_ids).clamp_max(self.ids.numel() - 1)
        return torch.where(self.ids[index] == token_ids, index, torch.full_like(index, -100))

    def token_ids(self, columns: Tensor) -> Tensor:
        """Columns of :meth:`kept_logits` -> token ids. Identity while unfitted."""
        return self.ids[columns] if self.fitted else columns

    def describe(self) -> str:
        size = f"{self.ids.numel()} ids" if self.fitted else "not fitted"
        return f"OutputVocabulary(min_count={self.min_count}: {size})"

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool, missing_keys: list[str], *args: Any
    ) -> None:
        stored = state_dict.get(prefix + "ids")
        if stored is not None and stored.shape != self.ids.shape:
            self.ids = torch.empty_like(stored, device=self.ids.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args)
        if stored is None and prefix + "ids" in missing_keys:
            # A checkpoint trained without an output vocabulary: stay unfitted (every id scored); fit() before
            # training on it (the model's on_fit_start does).
            missing_keys.remove(prefix + "ids")


def fit_output_vocabulary(vocabulary: OutputVocabulary | None, trainer: Any, vocab_size: int, keep: Iterable[int]) -> str | None:
    """Fit ``vocabulary`` on the training targets of ``trainer``'s data module (unless it is None). Already fitted
    (a resumed run's checkpoint brought the ids), check that every training target id is among them instead, so
    that training never meets a target its head cannot emit (when the trainer has a data module to count them on).
    Returns a line for the log, or None."""
    if vocabulary is None:
        return None
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or not callable(getattr(datamodule, "target_token_counts", None)):
        if vocabulary.fitted:  # fitted before this fit (a checkpoint, or by hand) and no data module to check it on
            return None
        raise ValueError("OutputVocabulary needs the training targets' token counts: use a data module with target_token_counts()")
    counts = datamodule.target_token_counts(vocab_size).to(vocabulary.ids.device)
    if vocabulary.fitted:
        seen = (counts >= 1).nonzero().flatten()
        outside = seen[vocabulary.columns(seen) < 0]
        if outside.numel() > 0:
            raise ValueError(
                f"{outside.numel()} token ids of the training targets (first: {int(outside[0])}) are outside the output "
                f"vocabulary the checkpoint was fitted with ({vocabulary.ids.numel()} ids): were the training targets or "
                "the tokenizer changed since? Train on the targets it was fitted on, or start a new run"
            )
        return None
    vocabulary.fit(counts, keep)
    return f"{vocabulary.describe()} of {vocab_size}: the output head scores the ids of the training targets only"


def warn_outside_vocabulary(columns: Tensor) -> None:
    """Warn (once per message) when evaluation targets hold ids the output head cannot emit (``columns`` ``< 0``):
    their probability is 0, and the losses leave them out rather than report an infinite loss."""
    outside = int((columns < 0).sum())
    if outside > 0:
        warnings.warn(
            "evaluation targets hold token ids outside the output vocabulary (the model gives them probability 0); "
            "the evaluation loss leaves those tokens out, so it is not comparable with a model without one",
            stacklevel=2,
        )


__all__ = ["OutputVocabulary", "fit_output_vocabulary", "warn_outside_vocabulary"]
