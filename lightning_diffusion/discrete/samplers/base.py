"""The discrete sampler interface: walk from the prior ``q(x_1)`` to tokens in ``steps`` denoiser calls."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_diffusion.discrete.categorical import sample_categorical
from lightning_diffusion.discrete.corruption.base import Corruption
from lightning_diffusion.discrete.denoisers.base import TokenDenoiser
from lightning_diffusion.discrete.schedules.base import MaskingSchedule
from lightning_diffusion.samplers.chain import ChainSampler
from lightning_diffusion.types import Conditioning


@dataclass
class DiscreteSampleOutput:
    """What a discrete sampler returns.

    Attributes:
        token_ids: ``[B, L]`` long, the decoded tokens (no ``[MASK]`` left).
        nfe: denoiser calls actually made for the batch (steps whose input did not change reuse the last call).
        scores: ``[B]`` the model's score of each sequence, the mean log-probability of its tokens at the
            predictions that decided them (:func:`mean_log_probability`), from samplers that score their tokens
            (:attr:`DiscreteSampler.scores_tokens`); None from the others.
    """

    token_ids: Tensor
    nfe: int
    scores: Tensor | None = None


def mean_log_probability(probs: Tensor, exists: Tensor) -> Tensor:
    """``[B]`` mean over existing positions (``exists`` ``[B, L]``) of ``log p`` (``probs`` ``[B, L]``): mask-predict's
    length-beam score ``(1 / N) sum_i log p(y_i)`` (Ghazvininejad et al. 2019). A zero probability counts as
    ``log(1e-30)``, so the score stays finite."""
    log_p = probs.float().clamp_min(1e-30).log().masked_fill(~exists, 0.0)
    return log_p.sum(-1) / exists.sum(-1).clamp_min(1)


def time_grid(steps: int, device: torch.device | None = None) -> Tensor:
    """``steps + 1`` times from 1 down to 0, evenly spaced: ``[1, 1 - 1/K, ..., 0]``."""
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


def token_choice(
    logits: Tensor, temperature: float, generator: torch.Generator | None = None, consume: bool = False
) -> tuple[Tensor, Tensor]:
    """Pick a token per position from logits ``[B, L, V]``: argmax when ``temperature == 0``, else a draw from
    ``softmax(logits / temperature)``. Returns the ids ``[B, L]`` and the model's probability of each pick
    ``[B, L]`` (at temperature 1; the confidence the re-masking rules rank by).

    ``consume=True`` lets the greedy pick overwrite ``logits`` (a float32 tensor the caller no longer needs):
    ``p(top) = 1 / sum_v exp(logit_v - logit_top)`` is then computed in place, without a ``[.., V]`` temporary
    (the head's softmax is a third of a small model's decoding time)."""
    if temperature == 0 and consume and logits.dtype == torch.float32:
        top, ids = logits.max(dim=-1)
        return ids, logits.sub_(top[..., None]).exp_().sum(-1).reciprocal()
    logits = logits.float()
    log_norm = torch.logsumexp(logits, dim=-1)  # p(v) = exp(logit_v - logsumexp), no [.., V] softmax kept
    if temperature == 0:
        top, ids = logits.max(dim=-1)
        return ids, torch.exp(top - log_norm)
    scaled = F.softmax(logits / temperature, dim=-1)
    ids = sample_categorical(scaled, generator)
    return ids, torch.exp(logits.gather(-1, ids[..., None]).squeeze(-1) - log_norm)


def state_time(schedule: MaskingSchedule, undecided: Tensor, exists: Tensor) -> Tensor:
    """The time ``[B]`` to feed the denoiser for a state whose undecided (masked / re-noised) positions are
    ``undecided`` ``[B, L]`` among ``exists`` ``[B, L]``: the time at which the training schedule leaves that share
    corrupted, ``t = alpha^{-1}(1 - share)`` (:meth:`MaskingSchedule.time_at`). Samplers whose own rule decides how
    many positions stay masked (mask-predict, thresholds) otherwise tell the model a time its training paired with
    a different share (a cosine-trained model at grid time 0.5 expects 71% masked, not a linear rule's 50%)."""
    share = (undecided & exists).sum(-1).float() / exists.sum(-1).clamp_min(1).float()
    return schedule.time_at(1.0 - share)


def predict_positions(
    denoiser: TokenDenoiser,
    x_t: Tensor,
    t: Tensor,
    cond: Conditioning,
    tgt_mask: Tensor | None,
    need: Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Token picks and their probabilities ``[B, L]`` at the positions ``need`` ``[B, L]`` only (0 elsewhere): the
    network runs over every position, the output head and softmax over the needed rows alone (and over the
    denoiser's output vocabulary alone, where it has one)."""
    hidden = denoiser.hidden_states(x_t, t, cond, tgt_mask)  # [B, L, H]
    ids = torch.zeros(need.shape, dtype=torch.long, device=need.device)
    probs = torch.zeros(need.shape, device=need.device)
    if bool(need.any()):
        logits = denoiser.kept_logits(hidden[need])[None]  # [1, N, V'], ours alone: consumed in place
        rows_columns, rows_probs = token_choice(logits, temperature, generator, consume=True)
        ids[need], probs[need] = denoiser.kept_ids(rows_columns[0]), rows_probs[0]
    return ids, probs


class DiscreteSampler(ChainSampler):
    """Base of the discrete samplers.

    Args:
        steps: sampling steps ``K`` (the most denoiser calls per candidate).
        temperature: 0 = the most likely token at every decision (default), else sample ``softmax(logits / T)``.
    """

    #: True for samplers defined only for absorbing corruption (every corrupted token is ``[MASK]``).
    needs_absorbing: bool = False
    #: True for samplers that return :attr:`DiscreteSampleOutput.scores` (needed by ``ModelScoreSelection``).
    scores_tokens: bool = False

    def __init__(self, steps: int = 10, temperature: float = 0.0) -> None:
        super().__init__(steps)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.temperature = temperature

    def describe(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, temperature={self.temperature:g})"

    @abstractmethod
    def sample(
        self,
        denoiser: TokenDenoiser,
        schedule: MaskingSchedule,
        corruption: Corruption,
        cond: Conditioning,
        length: int,
        tgt_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> DiscreteSampleOutput:
        """Decode one batch.

        Args:
            cond: conditioning for ``B`` sequences (already repeated per candidate).
            length: canvas length ``L``.
            tgt_mask: ``[B, L]`` positions that exist (the rest are ignored and returned as 0), or None for all.
            generator: RNG for the prior draw and every random decision.
            on_step: called with ``(done, total)`` after each step (progress bars).
        """


__all__ = ["DiscreteSampleOutput", "DiscreteSampler", "mean_log_probability", "predict_positions", "state_time", "time_grid", "token_choice"]
