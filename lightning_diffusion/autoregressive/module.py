"""The autoregressive baseline's LightningModule: teacher-forced training with label smoothing, greedy or beam
search decoding, and the shared validation / test / predict loop of :class:`Seq2SeqModule`."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lightning_diffusion.autoregressive.model import TransformerSeq2Seq
from lightning_diffusion.autoregressive.search import GreedySearch, Search
from lightning_diffusion.decoding import Decoding, DecodingError
from lightning_diffusion.output_vocabulary import (
    OutputVocabulary,
    warn_outside_vocabulary,
)
from lightning_diffusion.seq2seq import Generation, Seq2SeqModule
from lightning_diffusion.types import Seq2SeqBatch, scatter_rows

_INJECTED = ["network", "search", "optimizer", "lr_scheduler", "output_vocabulary"]


class AutoregressiveLM(Seq2SeqModule):
    """Left-to-right encoder-decoder Transformer, the baseline of the diffusion models (same blocks, same size).

    Training is teacher forcing: the decoder reads ``[BOS] + target[:-1]`` and predicts the target
    (tokens + EOS) under label-smoothed cross-entropy, padded positions ignored. Decoding runs ``search``
    (greedy or beam) with the KV cache, one decoder call per generated position.

    Args:
        network: factory called with ``vocab_size`` that builds the :class:`TransformerSeq2Seq` (in a
            recipe: its ``class_path`` and ``init_args`` without ``vocab_size``).
        search: the decoding rule; default :class:`GreedySearch`.
        optimizer: factory called with the parameters (LightningCLI's ``OptimizerCallable``).
        lr_scheduler: optional factory called with the optimizer; stepped every optimizer step.
        vocab_size: filled in from the data module's tokenizer.
        label_smoothing: mass spread uniformly over the vocabulary in the training loss (0.1 in the paper).
        max_length, length_ratio, length_offset: a source of ``n`` tokens gets hypotheses of at most
            ``min(max_length, ceil(length_ratio * n) + length_offset)`` tokens, EOS included.
        log_samples: decoded validation samples printed after each validation.
        decode_seed: kept for the shared interface (the searches are deterministic).
        decode_during_validation: decode and score BLEU/ROUGE in validation (else only the loss).
        output_vocabulary: score only the training targets' ids in the output head
            (:class:`~lightning_diffusion.output_vocabulary.OutputVocabulary`, fitted before training; label
            smoothing then spreads its mass over those ids); None = the whole vocabulary.
    """

    def __init__(
        self,
        network: Callable[[int], TransformerSeq2Seq],
        search: Search | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        vocab_size: int = 0,
        label_smoothing: float = 0.1,
        max_length: int = 128,
        length_ratio: float = 1.5,
        length_offset: int = 10,
        log_samples: int = 3,
        decode_seed: int = 0,
        decode_during_validation: bool = True,
        output_vocabulary: OutputVocabulary | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, log_samples, decode_seed, decode_during_validation)
        self.save_init_arguments(injected=_INJECTED, vocab_size=vocab_size)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.network = network(vocab_size)
        if output_vocabulary is not None:
            self.network.restrict_output(output_vocabulary)
        self.decoding = Decoding(search=search if search is not None else GreedySearch())
        self.label_smoothing = label_smoothing
        self.max_length = max_length
        self.length_ratio = length_ratio
        self.length_offset = length_offset

    @property
    def vocab_size(self) -> int:
        return self.network.vocab_size

    @property
    def search(self) -> Search:
        """The default decoding's search (read-only: pass another ``Decoding`` to change it)."""
        assert self.decoding.search is not None
        return self.decoding.search

    def check_decoding(self, decoding: Decoding) -> Decoding:
        if decoding.search is None:
            raise DecodingError(
                f"decoding: {type(self).__name__} decodes left to right with a search (greedy or beam); sampling "
                f"steps, samplers and noise or length beams apply to diffusion models"
            )
        return decoding

    # ------------------------------------------------------------------ training
    def compute_losses(self, batch: Seq2SeqBatch) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:
        """The training objective on one batch (token-level mean over the batch's real target positions).

        Returns:
            the scalar label-smoothed loss, the named terms (``nll``: the unsmoothed token NLL), the
            per-token NLL ``[B, L]`` and the target mask ``[B, L]`` (the shape of DiffusionLM's 4-tuple, which
            the shared evaluation loop unpacks).
        """
        if batch.tgt_ids is None or batch.tgt_mask is None:
            raise ValueError("training and validation batches need targets")
        target, mask = batch.tgt_ids, batch.tgt_mask
        bos = torch.full_like(target[:, :1], self.special_ids.bos)
        prev_ids = torch.cat([bos, target[:, :-1]], dim=1)
        cond = self.network.encode(batch.src_ids, batch.src_mask)
        hidden = self.network.hidden_states(prev_ids, cond)  # [B, L, H]
        # The head and softmax at the real target positions only (padding is scored by nothing).
        # Over the output vocabulary's ids only, where there is one ([N, V'], no [N, V] tensor): the other ids
        # have no probability, and label smoothing spreads over the ids that have.
        log_probs = F.log_softmax(self.network.kept_logits(hidden[mask]).float(), dim=-1)  # [N, V']
        columns = self.network.kept_columns(target[mask])  # [N]
        if not self.training and self.network.output_vocabulary is not None:
            warn_outside_vocabulary(columns)
        nll_rows = F.nll_loss(log_probs, columns, reduction="none")  # [N]; evaluation: 0 for an id it cannot emit
        smooth_rows = -log_probs.mean(-1)  # [N] cross-entropy against the uniform distribution
        per_token = (1.0 - self.label_smoothing) * nll_rows + self.label_smoothing * smooth_rows
        count = max(per_token.numel(), 1)
        loss = per_token.sum() / count
        nll = scatter_rows(nll_rows.detach(), mask)  # [B, L], 0 at padding
        return loss, {"nll": nll_rows.detach().sum() / count}, nll, mask

    def on_fit_start(self) -> None:
        """Fit the output vocabulary on the training targets (a resumed run's checkpoint brought it: check that the
        training targets are all in it)."""
        super().on_fit_start()
        self.fit_output_vocabulary(self.network.output_vocabulary)

    def evaluation_loss(self, batch: Seq2SeqBatch) -> tuple[Tensor, dict[str, Tensor]]:
        loss, terms, _, _ = self.compute_losses(batch)
        return loss, terms

    def training_step(self, batch: Seq2SeqBatch, batch_idx: int) -> Tensor:
        loss, terms, _, _ = self.compute_losses(batch)
        self.log_training_loss(loss, terms, len(batch))
        return loss

    # ------------------------------------------------------------------ decoding
    def max_lengths(self, src_mask: Tensor) -> Tensor:
        """Most tokens (EOS included) per hypothesis ``[B]``: ``min(max_length, ceil(ratio * n) + offset)`` for a
        source of ``n`` tokens, and no more than the decoder has positions for."""
        src_len = src_mask.sum(-1).to(torch.float64)
        lengths = torch.ceil(self.length_ratio * src_len).long() + self.length_offset
        cap = min(self.max_length, self.network.max_positions)
        return lengths.clamp(1, cap)

    @torch.no_grad()
    def generate(
        self,
        src_ids: Tensor,
        src_mask: Tensor,
        generator: torch.Generator | None = None,
        on_step: Callable[[int, int], None] | None = None,
        decoding: Decoding | None = None,
    ) -> Generation:
        """Decode ``B`` sources ``[B, S]``: encode once, then search with the KV cache. ``generator`` and
        ``on_step`` are unused: the searches are deterministic and have no sampling steps."""
        decoding = self.check_decoding(decoding if decoding is not None else self.decoding)
        assert decoding.search is not None
        ids = self.special_ids
        cond = self.network.encode(src_ids, src_mask)
        out = decoding.search.search(self.network, cond, ids.bos, ids.eos, ids.pad, self.max_lengths(src_mask))
        texts = self.decode_ids(out.token_ids, collapse=decoding.collapse_repeats)
        return Generation(texts=texts, nfe=out.steps, candidates=decoding.search.beam_size)

    def decoding_settings(self, decoding: Decoding | None = None) -> str:
        """The settings every reported score comes with."""
        decoding = self.check_decoding(decoding if decoding is not None else self.decoding)
        search = decoding.search
        assert search is not None
        collapsed = ", consecutive repeated tokens collapsed" if decoding.collapse_repeats else ""
        return (
            f"{search.describe()}{collapsed}, max length min({self.max_length}, ceil({self.length_ratio:g} x source length) "
            f"+ {self.length_offset}) tokens, NFE = decoder steps (KV cache; encoder run once per source"
            f"{', beams decoded in one batch' if search.beam_size > 1 else ''})"
        )
