"""Rounding latents to tokens and clamping them to word embeddings, in chunks of positions.

Both compare every position with all ``V`` words. Done at once for ``N`` positions that is an ``[N, V]`` score
matrix (21 candidates x 4,096 tokens x 32k words: 11 GB of float32); here the positions are flattened and
scored ``chunk_rows`` at a time, so the peak is one chunk's ``[chunk_rows, V]`` scores. A position's result
does not depend on the chunking: each row is scored whole, and ties go to the first index as in ``argmin`` /
``argmax`` over all of ``V``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_diffusion.denoisers.base import Denoiser

CHUNK_BYTES = 64 * 2**20
"""Default size of one chunk's ``[rows, V]`` scores (64 MiB)."""


def default_chunk_rows(vocab_size: int, element_size: int = 4) -> int:
    """Positions per chunk so that a chunk's ``[rows, V]`` scores take about :data:`CHUNK_BYTES` (at least 1)."""
    return max(1, CHUNK_BYTES // (vocab_size * element_size))


def _chunk_rows(chunk_rows: int | None, vocab_size: int, element_size: int) -> int:
    if chunk_rows is None:
        return default_chunk_rows(vocab_size, element_size)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1 or None, got {chunk_rows}")
    return chunk_rows


def nearest_token_ids(x: Tensor, table: Tensor, chunk_rows: int | None = None) -> Tensor:
    """Ids of the nearest rows of ``table`` ``[V, D]`` to each vector of ``x`` ``[..., D]`` -> ``[...]``:
    ``argmin_w ||E_w||^2 - 2 E_w . x`` (ties to the first id), scored ``chunk_rows`` positions at a time.

    Args:
        chunk_rows: positions scored at once (``[chunk_rows, V]`` scores); None = about 64 MiB of scores.
    """
    flat = x.reshape(-1, x.shape[-1])  # [N, D]
    dtype = torch.result_type(flat, table)
    rows = _chunk_rows(chunk_rows, table.shape[0], torch.empty((), dtype=dtype).element_size())
    norms = (table**2).sum(-1)  # [V]
    index = torch.empty(flat.shape[0], dtype=torch.long, device=x.device)  # [N]
    for start in range(0, flat.shape[0], rows):
        scores = norms - 2.0 * (flat[start : start + rows] @ table.T)  # [rows, V]
        index[start : start + rows] = scores.argmin(-1)
        del scores
    return index.view(x.shape[:-1])


def nearest_embedding(x: Tensor, table: Tensor, chunk_rows: int | None = None) -> Tensor:
    """Clamping (Diffusion-LM): replace each vector of ``x`` ``[..., D]`` by its nearest row of ``table``
    ``[V, D]`` (:func:`nearest_token_ids`); returns ``[..., D]``."""
    return table[nearest_token_ids(x, table, chunk_rows)]


def round_to_tokens(denoiser: Denoiser, z: Tensor, chunk_rows: int | None = None) -> Tensor:
    """Rounding: latents ``z`` ``[B, L, D]`` -> token ids ``[B, L]``, the argmax of the tied head over the ids it can
    emit (``denoiser.kept_logits``: an output vocabulary's ids only, else ``denoiser.logits``) computed over chunks
    of ``chunk_rows`` positions (the head gets ``[1, rows, D]``).

    Args:
        chunk_rows: positions rounded at once (``[chunk_rows, V]`` logits); None = about 64 MiB of logits.
    """
    b, length, d = z.shape
    flat = z.reshape(1, b * length, d)  # [1, N, D]
    rows = _chunk_rows(chunk_rows, denoiser.vocab_size, z.element_size())
    ids = torch.empty(b * length, dtype=torch.long, device=z.device)  # [N]
    for start in range(0, b * length, rows):
        logits = denoiser.kept_logits(flat[:, start : start + rows])  # [1, rows, V']
        ids[start : start + rows] = denoiser.kept_ids(logits[0].argmax(-1))
        del logits
    return ids.view(b, length)
