"""The denoiser interface: embed, encode the source once, predict ``x0`` from ``z_t``, round to logits."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_diffusion.arguments import check_at_least
from lightning_diffusion.output_vocabulary import OutputVocabulary
from lightning_diffusion.types import Conditioning


@dataclass
class DenoiserOutput:
    """What :meth:`Denoiser.predict` returns.

    Attributes:
        x0: ``[B, L, D]`` the estimate of the clean latents (what :meth:`Denoiser.forward` returns).
        logits: ``[B, L, V]`` the network's own token logits when it predicts tokens (CDCD's score
            interpolation, :class:`~lightning_diffusion.denoisers.ScoreInterpolationDenoiser`); None when it
            predicts latents directly.
        source_x0: ``[B, S, D]`` the network's output at the source positions, for denoisers that run the source
            through the same network as the target (:class:`~lightning_diffusion.denoisers.DiffuSeqDenoiser`);
            scored by :class:`~lightning_diffusion.losses.SourceMSE`. None otherwise.
    """

    x0: Tensor
    logits: Tensor | None = None
    source_x0: Tensor | None = None


class Denoiser(nn.Module, ABC):
    """Base class of every denoiser. Owns the word embedding (latent width ``D``) and the tied rounding head.

    Subclasses implement :meth:`encode` (run once per source) and :meth:`forward` (run at every step), and
    set ``hidden_dim``: the width ``H`` of :attr:`Conditioning.hidden` (a length predictor is sized by it).

    Args:
        vocab_size: ``V``; filled in from the tokenizer (the recipe does not set it).
        latent_dim: ``D``, width of the diffused embeddings (may differ from the transformer width).
        embedding_norm: LayerNorm on the embeddings (Difformer), so frequent and rare words get noise of
            comparable relative size.
        embedding_scale: multiply (normalised) embeddings by this, e.g. ``sqrt(D)`` (Difformer); None = 1.
        self_conditioning: accept the previous ``x0`` estimate as an extra input (SED / Bit Diffusion).
    """

    hidden_dim: int
    #: True for denoisers whose ``predict(..., with_source=True)`` returns ``source_x0`` (the source runs through
    #: the same network as the target: :class:`~lightning_diffusion.denoisers.DiffuSeqDenoiser`).
    returns_source_output: bool = False

    def __init__(
        self,
        vocab_size: int,
        latent_dim: int,
        embedding_norm: bool = False,
        embedding_scale: float | None = None,
        self_conditioning: bool = False,
    ) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        check_at_least(type(self).__name__, 1, latent_dim=latent_dim)
        self.vocab_size = vocab_size
        self.latent_dim = latent_dim
        self.self_conditioning = self_conditioning
        self.word_embedding = nn.Embedding(vocab_size, latent_dim)
        nn.init.normal_(self.word_embedding.weight, std=1.0)
        self.embedding_norm = nn.LayerNorm(latent_dim) if embedding_norm else None
        self.embedding_scale = embedding_scale
        self.output_vocabulary: OutputVocabulary | None = None

    def restrict_output(self, vocabulary: OutputVocabulary) -> None:
        """Round to ``vocabulary``'s ids only: :meth:`logits` gives the others ``-inf``, :meth:`kept_logits` and
        :meth:`kept_table` leave them out (the word embedding keeps every row: sources and inputs use them)."""
        self.output_vocabulary = vocabulary

    def _normalize(self, emb: Tensor) -> Tensor:
        if self.embedding_norm is not None:
            emb = self.embedding_norm(emb)
        if self.embedding_scale is not None:
            emb = emb * self.embedding_scale
        return emb

    def embed(self, ids: Tensor) -> Tensor:
        """Token ids ``[B, L]`` -> latents ``z0 = Emb(y)`` ``[B, L, D]``."""
        return self._normalize(self.word_embedding(ids))

    def embedding_table(self) -> Tensor:
        """Every word's latent ``[V, D]`` (the rows :meth:`embed` returns), for rounding and clamping."""
        return self._normalize(self.word_embedding.weight)

    def logits(self, z: Tensor) -> Tensor:
        """Tied rounding head: latents ``[..., D]`` -> ``[..., V]`` as ``z . E_w`` (``-inf`` at the ids outside the
        :class:`OutputVocabulary`, when set)."""
        if self.output_vocabulary is not None:
            return self.output_vocabulary.expand(self.kept_logits(z), self.vocab_size)
        return F.linear(z, self.embedding_table())

    def kept_table(self) -> Tensor:
        """``[V', D]``: the rows of :meth:`embedding_table` of the :class:`OutputVocabulary`'s ids (all ``V`` rows
        without one), row ``k`` for id ``kept_ids(k)``; what rounding and clamping choose among."""
        vocabulary = self.output_vocabulary
        if vocabulary is None or not vocabulary.fitted:
            return self.embedding_table()
        return self._normalize(self.word_embedding.weight.index_select(0, vocabulary.ids))

    def kept_logits(self, z: Tensor) -> Tensor:
        """``[..., D]`` -> ``[..., V']``: the rounding head over the output vocabulary's ids only (no ``[..., V]``
        tensor is built; :meth:`logits`, which a subclass may override, without one); the losses and the final
        rounding read it, :meth:`kept_ids` maps its columns back to token ids."""
        if self.output_vocabulary is None:
            return self.logits(z)
        return F.linear(z, self.kept_table())

    def kept_ids(self, columns: Tensor) -> Tensor:
        """Columns of :meth:`kept_logits` (rows of :meth:`kept_table`) -> token ids."""
        return columns if self.output_vocabulary is None else self.output_vocabulary.token_ids(columns)

    def kept_columns(self, token_ids: Tensor) -> Tensor:
        """Token ids -> columns of :meth:`kept_logits` (``-100`` for an id outside the output vocabulary)."""
        return token_ids if self.output_vocabulary is None else self.output_vocabulary.columns(token_ids)

    @abstractmethod
    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Conditioning:
        """Source ids ``[B, S]`` and mask ``[B, S]`` -> :class:`Conditioning`, computed once per source."""

    @abstractmethod
    def forward(
        self,
        z_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        tgt_mask: Tensor | None = None,
        self_cond: Tensor | None = None,
    ) -> Tensor:
        """Predict the clean latents.

        Args:
            z_t: ``[B, L, D]`` noisy target latents.
            t: ``[B]`` integer steps in ``1..T``.
            cond: the source's :class:`Conditioning` (batch ``B``).
            tgt_mask: ``[B, L]`` bool, target positions that exist (True); None = all ``L`` positions.
            self_cond: ``[B, L, D]`` previous ``x0`` estimate (self-conditioning), or None (zeros).

        Returns:
            ``x0_hat`` ``[B, L, D]``.
        """

    def predict(
        self,
        z_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        tgt_mask: Tensor | None = None,
        self_cond: Tensor | None = None,
        with_source: bool = False,
    ) -> DenoiserOutput:
        """The training pass: ``x0_hat`` and, for denoisers that predict tokens, their logits ``[B, L, V]``.

        Same arguments as :meth:`forward`, and ``with_source``: also return the output at the source positions
        (``source_x0``) where the denoiser has one (a loss term asks for it). The default calls the module
        (forward hooks included) and has neither; a denoiser whose ``x0`` comes from token logits overrides it to
        return them as well.
        """
        return DenoiserOutput(x0=self(z_t, t, cond, tgt_mask, self_cond))
