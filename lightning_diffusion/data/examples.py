"""Tokenized examples of a split, their dataset, and padding them into a :class:`Seq2SeqBatch`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from lightning_diffusion.types import Seq2SeqBatch


@dataclass
class TokenizedExample:
    """One tokenized example of a split.

    Attributes:
        index: position of the example in its split.
        src_ids: source token ids, no special tokens, truncated to ``max_src_len``.
        tgt_ids: target token ids without the EOS, truncated to ``max_tgt_len - 1``; None without targets.
        src_text: raw source string.
        tgt_text: raw target string, or None.
    """

    index: int
    src_ids: list[int]
    tgt_ids: list[int] | None
    src_text: str
    tgt_text: str | None


class Seq2SeqDataset(Dataset[TokenizedExample]):
    """A list of tokenized examples (one split)."""

    def __init__(self, examples: list[TokenizedExample]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> TokenizedExample:
        return self.examples[index]


def collate_examples(examples: Sequence[TokenizedExample], pad_id: int, eos_id: int) -> Seq2SeqBatch:
    """Pad examples into a :class:`Seq2SeqBatch`.

    ``src_ids``/``src_mask`` ``[B, S]`` with ``S = max(1, longest source)``; ``tgt_ids``/``tgt_mask`` ``[B, L]``
    with ``L = longest target + 1``: target tokens, one EOS, then ``pad_id``; the mask is True at tokens and
    the EOS. Targets are included only when every example has one.
    """
    batch_size = len(examples)
    src_width = max(1, max(len(ex.src_ids) for ex in examples))
    src_ids = torch.full((batch_size, src_width), pad_id, dtype=torch.long)
    src_mask = torch.zeros((batch_size, src_width), dtype=torch.bool)
    for row, ex in enumerate(examples):
        src_ids[row, : len(ex.src_ids)] = torch.tensor(ex.src_ids, dtype=torch.long)
        src_mask[row, : len(ex.src_ids)] = True
    batch = Seq2SeqBatch(
        src_ids=src_ids,
        src_mask=src_mask,
        index=torch.tensor([ex.index for ex in examples], dtype=torch.long),
        src_text=[ex.src_text for ex in examples],
    )
    if all(ex.tgt_ids is not None and ex.tgt_text is not None for ex in examples):
        targets = [[*ex.tgt_ids, eos_id] for ex in examples if ex.tgt_ids is not None]
        tgt_width = max(len(ids) for ids in targets)
        batch.tgt_ids = torch.full((batch_size, tgt_width), pad_id, dtype=torch.long)
        batch.tgt_mask = torch.zeros((batch_size, tgt_width), dtype=torch.bool)
        for row, ids in enumerate(targets):
            batch.tgt_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            batch.tgt_mask[row, : len(ids)] = True
        batch.tgt_text = [ex.tgt_text for ex in examples if ex.tgt_text is not None]
    return batch


__all__ = ["Seq2SeqDataset", "TokenizedExample", "collate_examples"]
