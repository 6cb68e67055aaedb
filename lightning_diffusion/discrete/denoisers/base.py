"""The token denoiser interface of discrete diffusion: encode the source once, predict ``x0`` logits from ``x_t``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_diffusion.denoisers.layers import TimestepEmbedding
from lightning_diffusion.output_vocabulary import OutputVocabulary
from lightning_diffusion.types import Conditioning


class TokenDenoiser(nn.Module, ABC):
    """Base of the discrete denoisers. Owns the token embedding shared by source, corrupted target and output
    head (fairseq's ``share_all_embeddings``; one vocabulary for both languages), and the ``[MASK]`` vector.

    Ids ``0..V-1`` are tokens; ``mask_id = V`` is ``[MASK]``, embedded by its own learned vector. The output head
    scores the ``V`` tokens only, so ``[MASK]`` is never predicted (MDLM's zero-mass rule).

    Args:
        vocab_size: ``V``; filled in from the tokenizer.
        hidden_dim: model width ``H``.
        time_conditioning: add an embedding of ``t`` to the target input (DiffusionBERT's "time-agnostic"
            ablation: absorbing models can infer ``t`` from the share of masks; RDM and MDLM drop it).
    """

    hidden_dim: int

    def __init__(self, vocab_size: int, hidden_dim: int, time_conditioning: bool = False) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.vocab_size = vocab_size
        self.hidden_dim = hidden_dim
        self.token_embedding = nn.Embedding(vocab_size, hidden_dim)
        nn.init.normal_(self.token_embedding.weight, std=hidden_dim**-0.5)
        self.mask_embedding = nn.Parameter(torch.randn(hidden_dim) * hidden_dim**-0.5)
        self.output_bias = nn.Parameter(torch.zeros(vocab_size))
        self.scale = hidden_dim**0.5
        self.time_conditioning = time_conditioning
        self.time_embedding = TimestepEmbedding(hidden_dim) if time_conditioning else None
        self.output_vocabulary: OutputVocabulary | None = None

    def restrict_output(self, vocabulary: OutputVocabulary) -> None:
        """Score only ``vocabulary``'s ids in :meth:`output_logits` (the others get logit ``-inf``)."""
        self.output_vocabulary = vocabulary

    @property
    def mask_id(self) -> int:
        """The ``[MASK]`` id: ``V`` (one past the vocabulary)."""
        return self.vocab_size

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """Ids ``[B, L]`` (``[MASK]`` allowed) -> ``[B, L, H]``, scaled by ``sqrt(H)``."""
        masked = ids == self.mask_id
        emb = self.token_embedding(ids.masked_fill(masked, 0))
        emb = torch.where(masked[..., None], self.mask_embedding.to(emb.dtype), emb)
        return emb * self.scale

    def time_features(self, t: Tensor) -> Tensor | None:
        """``[B, H]`` embedding of ``t in [0, 1]`` (on a 0..1000 scale), or None without time conditioning."""
        return None if self.time_embedding is None else self.time_embedding(t.float() * 1000.0)

    def kept_logits(self, hidden: Tensor) -> Tensor:
        """``[..., H]`` -> ``[..., V']``: the head over the :class:`OutputVocabulary`'s ids only (``V' = V`` without
        one: :meth:`output_logits`, so a subclass that overrides it is used); :meth:`kept_ids` maps its columns back
        to token ids, :meth:`kept_columns` token ids to columns."""
        if self.output_vocabulary is not None:
            return self.output_vocabulary.kept_logits(hidden, self.token_embedding.weight, self.output_bias)
        return self.output_logits(hidden)

    def kept_ids(self, columns: Tensor) -> Tensor:
        """Columns of :meth:`kept_logits` -> token ids."""
        return columns if self.output_vocabulary is None else self.output_vocabulary.token_ids(columns)

    def kept_columns(self, token_ids: Tensor) -> Tensor:
        """Token ids -> columns of :meth:`kept_logits` (``-100`` for an id outside the output vocabulary)."""
        return token_ids if self.output_vocabulary is None else self.output_vocabulary.columns(token_ids)

    def output_logits(self, hidden: Tensor) -> Tensor:
        """Tied output head: ``[..., H]`` -> ``[..., V]`` (over the :class:`OutputVocabulary` only, when set)."""
        if self.output_vocabulary is not None:
            return self.output_vocabulary.logits(hidden, self.token_embedding.weight, self.output_bias)
        return F.linear(hidden, self.token_embedding.weight, self.output_bias)

    @abstractmethod
    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Conditioning:
        """Source ids ``[B, S]`` and mask ``[B, S]`` -> :class:`Conditioning`, computed once per source."""

    @abstractmethod
    def hidden_states(self, x_t: Tensor, t: Tensor, cond: Conditioning, tgt_mask: Tensor | None = None) -> Tensor:
        """The states the output head reads, ``[B, L, H]``, from corrupted ids ``x_t`` ``[B, L]`` at times ``t``
        ``[B]`` (in [0, 1]); ``tgt_mask`` ``[B, L]`` marks positions that exist (None = all). Samplers that need
        predictions at some positions only apply :meth:`output_logits` to those rows (the ``[rows, V]`` head is
        most of a small model's cost)."""

    def forward(self, x_t: Tensor, t: Tensor, cond: Conditioning, tgt_mask: Tensor | None = None) -> Tensor:
        """Logits of ``x0`` ``[B, L, V]``: :meth:`output_logits` of :meth:`hidden_states`."""
        return self.output_logits(self.hidden_states(x_t, t, cond, tgt_mask))


__all__ = ["TokenDenoiser"]
