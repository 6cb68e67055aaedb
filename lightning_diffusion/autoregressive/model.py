"""The autoregressive baseline's network: an encoder-decoder Transformer built from the diffusion models' blocks.

Shapes use: B batch, S source length, L target length, H model width, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_diffusion.denoisers.encoder_decoder import TransformerEncoder
from lightning_diffusion.denoisers.layers import KVCache, TransformerLayer
from lightning_diffusion.output_vocabulary import OutputVocabulary
from lightning_diffusion.types import Conditioning


class TransformerSeq2Seq(nn.Module):
    """Encoder-decoder Transformer (Vaswani et al., 2017) with pre-LayerNorm blocks and a causal decoder.

    The encoder is the diffusion models' :class:`TransformerEncoder`; the decoder embeds tokens
    (``* sqrt(H)``) plus learned positions and runs :class:`TransformerLayer` blocks with causal
    self-attention and cross-attention over the encoder output, a final LayerNorm and an output projection
    (tied to the decoder's token embedding by default).

    Args:
        vocab_size: ``V`` (source and target share the tokenizer).
        hidden_dim, encoder_layers, decoder_layers, num_heads, ffn_dim, dropout: Transformer shape
            (base: 512, 6 + 6, 8 heads, 2048, dropout 0.1).
        max_positions: longest source and longest decoder input (BOS + target tokens).
        tie_embeddings: output projection shares the decoder's token embedding matrix.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_dim: int = 512,
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        max_positions: int = 512,
        tie_embeddings: bool = True,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden_dim = hidden_dim
        self.max_positions = max_positions
        self.encoder = TransformerEncoder(vocab_size, hidden_dim, encoder_layers, num_heads, ffn_dim, dropout, max_positions)
        self.token_embedding = nn.Embedding(vocab_size, hidden_dim)
        nn.init.normal_(self.token_embedding.weight, std=hidden_dim**-0.5)
        self.position_embedding = nn.Embedding(max_positions, hidden_dim)
        self.scale = hidden_dim**0.5
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(hidden_dim, num_heads, ffn_dim, dropout, cross_attention=True) for _ in range(decoder_layers)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, vocab_size, bias=False)
        if tie_embeddings:
            self.output_proj.weight = self.token_embedding.weight
        self.output_vocabulary: OutputVocabulary | None = None

    def restrict_output(self, vocabulary: OutputVocabulary) -> None:
        """Score only ``vocabulary``'s ids in the output head (the others get logit ``-inf``)."""
        self.output_vocabulary = vocabulary

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Conditioning:
        """Run the encoder: ids ``[B, S]`` with mask ``[B, S]`` (True = real) -> hidden ``[B, S, H]``."""
        return Conditioning(hidden=self.encoder(src_ids, src_mask), mask=src_mask)

    def _embed(self, ids: Tensor, positions: Tensor) -> Tensor:
        if int(positions.max()) >= self.max_positions:
            raise ValueError(
                f"decoder position {int(positions.max())} exceeds the decoder's max_positions {self.max_positions}"
            )
        return self.dropout(self.token_embedding(ids) * self.scale + self.position_embedding(positions))

    def _project(self, x: Tensor) -> Tensor:
        if self.output_vocabulary is not None:
            return self.output_vocabulary.logits(self.norm(x), self.output_proj.weight, self.output_proj.bias)
        return self.output_proj(self.norm(x))

    def kept_logits(self, hidden: Tensor) -> Tensor:
        """Decoder states ``[..., H]`` -> ``[..., V']``: the head over the :class:`OutputVocabulary`'s ids only
        (``V' = V`` without one); :meth:`kept_columns` maps token ids to its columns."""
        if self.output_vocabulary is not None:
            return self.output_vocabulary.kept_logits(self.norm(hidden), self.output_proj.weight, self.output_proj.bias)
        return self.output_logits(hidden)

    def kept_columns(self, token_ids: Tensor) -> Tensor:
        """Token ids -> columns of :meth:`kept_logits` (``-100`` for an id outside the output vocabulary)."""
        return token_ids if self.output_vocabulary is None else self.output_vocabulary.columns(token_ids)

    def output_logits(self, hidden: Tensor) -> Tensor:
        """The output head: decoder states ``[..., H]`` (before the final norm) -> next-token logits ``[..., V]``."""
        return self._project(hidden)

    def hidden_states(self, prev_ids: Tensor, cond: Conditioning, tgt_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing up to the output head: ``prev_ids`` ``[B, L]`` -> decoder states ``[B, L, H]`` that
        :meth:`output_logits` reads (training applies the head to the real target positions only)."""
        positions = torch.arange(prev_ids.shape[1], device=prev_ids.device)
        x = self._embed(prev_ids, positions)
        for layer in self.layers:
            x = layer(x, tgt_mask, cond.hidden, cond.mask, causal=True)
        return x

    def forward(self, prev_ids: Tensor, cond: Conditioning, tgt_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: decoder inputs ``prev_ids`` ``[B, L]`` (BOS + target tokens shifted right) ->
        next-token logits ``[B, L, V]``; position ``i`` sees ``prev_ids[:, :i + 1]`` and the whole source.

        ``tgt_mask`` ``[B, L]`` (True = real) is optional: with right padding, causal attention never lets a
        real position see a padded one, so it changes only the (ignored) outputs at padded positions.
        """
        return self.output_logits(self.hidden_states(prev_ids, cond, tgt_mask))

    def init_cache(self, cond: Conditioning, repeat: int = 1) -> list[KVCache]:
        """A fresh cache per decoder layer for decoding ``cond``'s ``B`` sources, each ``repeat`` times (beams).

        The cross-attention keys/values are projected here, once per source, and repeated to ``B * repeat``
        rows (copies of one source adjacent, as :meth:`Conditioning.repeat_interleave` orders them).
        """
        caches = []
        for layer in self.layers:
            k, v = layer.cross_attn.project_kv(cond.hidden)
            if repeat > 1:
                k, v = k.repeat_interleave(repeat, dim=0), v.repeat_interleave(repeat, dim=0)
            caches.append(KVCache(cross_k=k, cross_v=v))
        return caches

    @staticmethod
    def reorder_cache(cache: list[KVCache], indices: Tensor, cross: bool = True) -> list[KVCache]:
        """Keep rows ``indices`` ``[B']`` of every layer's cache (see :meth:`KVCache.reorder`)."""
        for layer_cache in cache:
            layer_cache.reorder(indices, cross=cross)
        return cache

    def decode_step(self, last_ids: Tensor, cond: Conditioning, cache: list[KVCache], position: int) -> Tensor:
        """One incremental decoder step: the newest input token ``last_ids`` ``[B]`` (BOS at ``position`` 0)
        -> logits ``[B, V]`` of the token after it. Appends this position's self-attention keys/values to
        ``cache`` (from :meth:`init_cache`, holding ``position`` earlier positions); ``cond.mask`` ``[B, S]``
        masks the cached cross-attention keys (``cond.hidden`` itself is not read again)."""
        if cache and cache[0].length != position:
            raise ValueError(f"the cache holds {cache[0].length} positions, but decode_step was asked for position {position}")
        positions = torch.full((1,), position, dtype=torch.long, device=last_ids.device)
        x = self._embed(last_ids[:, None], positions)
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            x = layer(x, None, cond.hidden, cond.mask, causal=True, cache=layer_cache)
        return self._project(x)[:, 0]
