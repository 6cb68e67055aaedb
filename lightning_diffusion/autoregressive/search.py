"""Left-to-right search over a :class:`TransformerSeq2Seq`: greedy and beam search, both with the KV cache.

The caller encodes the sources once; the searches project the cross-attention keys/values once per source
(:meth:`TransformerSeq2Seq.init_cache`) and run one cached decoder call per generated position. Sources
that have finished are dropped from the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_diffusion.autoregressive.model import TransformerSeq2Seq
from lightning_diffusion.types import Conditioning


@dataclass
class SearchOutput:
    """What a search returns.

    Attributes:
        token_ids: ``[B, L]`` long, the chosen hypothesis per source without the BOS, ended by EOS and
            right-padded with the pad id (``L`` is the longest hypothesis, EOS included).
        steps: decoder calls made (generated positions of the longest-running source): the NFE.
        scores: ``[B]`` the chosen hypotheses' scores (sum of token log-probabilities, EOS included, divided
            by ``length ** length_penalty`` for beam search).
    """

    token_ids: Tensor
    steps: int
    scores: Tensor


def _select_rows(cond: Conditioning, rows: Tensor) -> Conditioning:
    return Conditioning(
        hidden=cond.hidden.index_select(0, rows),
        mask=cond.mask.index_select(0, rows),
        extras={k: v.index_select(0, rows) for k, v in cond.extras.items()},
    )


def _log_probs(logits: Tensor, bos_id: int, eos_id: int, pad_id: int, force_eos: Tensor) -> Tensor:
    """Next-token log-probabilities ``[R, V]`` (float32): never pad or BOS (unless it is the EOS); only EOS
    in rows where ``force_eos`` ``[R]`` (the last position a hypothesis may have)."""
    lp = F.log_softmax(logits.float(), dim=-1)
    for banned in {pad_id, bos_id} - {eos_id}:
        lp[:, banned] = float("-inf")
    if bool(force_eos.any()):
        eos_lp = lp[:, eos_id].clone()
        lp[force_eos] = float("-inf")
        lp[force_eos, eos_id] = eos_lp[force_eos]
    return lp


def _pad_rows(rows: list[Tensor], pad_id: int, device: torch.device) -> Tensor:
    width = max(1, max((len(r) for r in rows), default=1))
    out = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


class Search:
    """A decoding rule for :class:`TransformerSeq2Seq`.

    Attributes:
        beam_size: hypotheses kept per source (candidates decoded per source).
    """

    beam_size: int = 1

    def search(
        self,
        model: TransformerSeq2Seq,
        cond: Conditioning,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        max_lengths: Tensor,
    ) -> SearchOutput:
        """Decode ``cond``'s ``B`` encoded sources.

        Args:
            model: the network (decoder calls only: the sources are already encoded).
            cond: ``model.encode(src_ids, src_mask)``.
            bos_id, eos_id, pad_id: special ids (pad and BOS are never generated).
            max_lengths: ``[B]`` long, most tokens per hypothesis counting its EOS (>= 1); a hypothesis that
                reaches it gets the EOS.
        """
        raise NotImplementedError

    def describe(self) -> str:
        """The search and its settings in words."""
        return type(self).__name__


class GreedySearch(Search):
    """The most likely next token at every step (one candidate per source)."""

    @torch.no_grad()
    def search(
        self,
        model: TransformerSeq2Seq,
        cond: Conditioning,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        max_lengths: Tensor,
    ) -> SearchOutput:
        b = cond.hidden.shape[0]
        device = cond.hidden.device
        max_lengths = max_lengths.to(device=device, dtype=torch.long).clamp_min(1)
        out = torch.full((b, int(max_lengths.max())), pad_id, dtype=torch.long, device=device)
        scores = torch.zeros(b, device=device)
        alive = torch.arange(b, device=device)  # original index of each row still decoding
        cache = model.init_cache(cond)
        last = torch.full((b,), bos_id, dtype=torch.long, device=device)
        steps = 0
        while alive.numel() > 0:
            logits = model.decode_step(last, cond, cache, steps)
            lp = _log_probs(logits, bos_id, eos_id, pad_id, max_lengths[alive] == steps + 1)
            best, token = lp.max(dim=-1)
            out[alive, steps] = token
            scores[alive] += best
            steps += 1
            going = token != eos_id
            if not bool(going.all()):
                keep = going.nonzero().squeeze(1)
                alive, last = alive[keep], token[keep]
                model.reorder_cache(cache, keep)
                cond = _select_rows(cond, keep)
            else:
                last = token
        return SearchOutput(token_ids=out[:, : max(steps, 1)], steps=steps, scores=scores)


class BeamSearch(Search):
    """Beam search with every source's beams decoded in one batch (fairseq's rule).

    Each step ranks the ``2 * beam_size`` best continuations of a source's live beams; an EOS among the top
    ``beam_size`` of them completes a hypothesis, kept with score ``logprob / length ** length_penalty``
    (``length`` counts the EOS); the ``beam_size`` best other continuations are the next live beams, and
    the KV cache is reordered to follow them. A source is done when it has ``beam_size`` complete
    hypotheses (or reaches its maximum length); its best-scoring complete hypothesis is returned.

    Args:
        beam_size: live hypotheses per source.
        length_penalty: exponent of the length normalisation (0: raw log-probability; 1: per-token mean).
    """

    def __init__(self, beam_size: int = 4, length_penalty: float = 1.0) -> None:
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self.beam_size = beam_size
        self.length_penalty = length_penalty

    def describe(self) -> str:
        return f"BeamSearch(beam={self.beam_size}, length_penalty={self.length_penalty})"

    @torch.no_grad()
    def search(
        self,
        model: TransformerSeq2Seq,
        cond: Conditioning,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        max_lengths: Tensor,
    ) -> SearchOutput:
        k = self.beam_size
        b = cond.hidden.shape[0]
        device = cond.hidden.device
        max_lengths = max_lengths.to(device=device, dtype=torch.long).clamp_min(1)
        finished: list[list[tuple[float, Tensor]]] = [[] for _ in range(b)]
        alive = torch.arange(b, device=device)  # original index of each source still decoding
        cache = model.init_cache(cond, repeat=k)
        cond = cond.repeat_interleave(k)
        # Only the first beam of a source is live at the start (all beams would be the same).
        beam_scores = torch.full((b, k), float("-inf"), device=device)
        beam_scores[:, 0] = 0.0
        tokens = torch.zeros(b * k, 0, dtype=torch.long, device=device)
        last = torch.full((b * k,), bos_id, dtype=torch.long, device=device)
        steps = 0
        while alive.numel() > 0:
            n = alive.numel()
            logits = model.decode_step(last, cond, cache, steps)  # [n * k, V]
            at_max = max_lengths[alive] == steps + 1  # [n]
            lp = _log_probs(logits, bos_id, eos_id, pad_id, at_max.repeat_interleave(k))
            vocab = lp.shape[-1]
            candidates = (beam_scores[:, :, None] + lp.view(n, k, vocab)).view(n, k * vocab)
            top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=-1)  # [n, 2k], best first
            top_beam = torch.div(top_index, vocab, rounding_mode="floor")
            top_token = top_index % vocab
            steps += 1

            # Complete hypotheses: EOS among a source's top k continuations (with a finite score).
            is_eos = top_token == eos_id
            completes = is_eos & torch.isfinite(top_scores)
            completes[:, k:] = False
            normaliser = float(steps) ** self.length_penalty
            for row, rank in completes.nonzero().tolist():
                source = int(alive[row])
                if len(finished[source]) >= k:
                    continue
                history = tokens[row * k + int(top_beam[row, rank])]
                hypothesis = torch.cat([history, history.new_tensor([eos_id])])
                finished[source].append((float(top_scores[row, rank]) / normaliser, hypothesis))

            # Next live beams: the k best continuations that are not EOS.
            rank_key = torch.arange(top_scores.shape[1], device=device).expand_as(top_scores) + is_eos * top_scores.shape[1]
            order = rank_key.argsort(dim=-1)[:, :k]  # non-EOS first, in score order
            next_beam = top_beam.gather(1, order)
            next_token = top_token.gather(1, order)
            next_scores = top_scores.gather(1, order).masked_fill(is_eos.gather(1, order), float("-inf"))
            rows = (torch.arange(n, device=device)[:, None] * k + next_beam).view(-1)  # [n * k] old rows

            done = at_max.clone()
            for row in range(n):
                if len(finished[int(alive[row])]) >= k:
                    done[row] = True
            keep = (~done).nonzero().squeeze(1)
            shrink = keep.numel() < n
            if shrink:  # drop the finished sources' beams from the batch
                rows = rows.view(n, k)[keep].view(-1)
                next_token, next_scores, alive = next_token[keep], next_scores[keep], alive[keep]
                cond = _select_rows(cond, rows)
            # rows stay within their source, so the (per-source) cross-attention keys move only when
            # sources are dropped
            model.reorder_cache(cache, rows, cross=shrink)
            tokens = torch.cat([tokens.index_select(0, rows), next_token.reshape(-1, 1)], dim=1)
            beam_scores = next_scores
            last = next_token.reshape(-1)

        best = []
        scores = torch.empty(b, device=device)
        for source, hypotheses in enumerate(finished):
            if not hypotheses:  # cannot happen: the last allowed position completes every live beam
                hypotheses = [(float("-inf"), torch.tensor([eos_id], device=device))]
            score, hypothesis = max(hypotheses, key=lambda h: h[0])
            best.append(hypothesis)
            scores[source] = score
        return SearchOutput(token_ids=_pad_rows(best, pad_id, device), steps=steps, scores=scores)
