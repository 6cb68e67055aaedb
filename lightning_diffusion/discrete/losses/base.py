"""Loss terms of discrete diffusion: what they see (:class:`DiscreteLossInputs`) and their base class."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from torch import Tensor

from lightning_diffusion.discrete.corruption.base import Corruption
from lightning_diffusion.losses import LossTerm
from lightning_diffusion.types import scatter_rows


@dataclass
class DiscreteLossInputs:
    """Everything a discrete loss term may look at for one training batch.

    The denoiser's prediction arrives as its last hidden states and its output head, so that a term that scores
    the corrupted positions only (:attr:`corrupted_logits`, ``[N, V']``) never pays for the ``[B, L, V]`` head and
    softmax at the clean ones (with the cosine schedule ~64% of the positions; the head is most of a small model's
    training step). Terms that need every position read :attr:`logits`.

    Attributes:
        x0: ``[B, L]`` long, the clean target (canvas) ids.
        x_t: ``[B, L]`` long, the corrupted ids (``mask_id`` = ``V`` where masked).
        hidden: ``[B, L, H]`` the denoiser's states for ``x_t`` (what its output head reads).
        head: ``[..., H] -> [..., V']``, the denoiser's output head (logits of ``x0``) over its output vocabulary's
            ``V'`` ids (:meth:`TokenDenoiser.kept_logits`; all ``V`` without one): compare it with
            :attr:`corrupted_targets` / :attr:`x0_columns`, not with raw ids.
        columns: token ids (any shape) -> the head's columns (``-100`` for an id it cannot emit; identity without
            an output vocabulary).
        mask: ``[B, L]`` bool, positions that count in the loss.
        t: ``[B]`` float, the sampled times in ``(0, 1]``.
        alpha_t: ``[B, L]`` the schedule's ``alpha(t)`` per position.
        rate_t: ``[B, L]`` the absorbing ELBO weight ``-alpha'(t) / (1 - alpha(t))``.
        alpha_at: ``t' [B] -> [B, L]`` the schedule at another time for these ``x0`` (the D3PM term's ``s``).
        corruption: the forward process.
        mask_id: the ``[MASK]`` id (``V``).
        length_logits, length_targets: as in :class:`~lightning_diffusion.types.LossInputs` (for ``LengthNLL``).
    """

    x0: Tensor
    x_t: Tensor
    hidden: Tensor
    head: Callable[[Tensor], Tensor]
    mask: Tensor
    t: Tensor
    alpha_t: Tensor
    rate_t: Tensor
    alpha_at: Callable[[Tensor], Tensor]
    corruption: Corruption
    mask_id: int
    length_logits: Tensor | None = None
    length_targets: Tensor | None = None
    columns: Callable[[Tensor], Tensor] = lambda ids: ids

    @cached_property
    def x0_columns(self) -> Tensor:
        """``[B, L]`` long: :attr:`x0` as columns of :attr:`head` (``-100`` where the head cannot emit the id)."""
        return self.columns(self.x0)

    @cached_property
    def corrupted_targets(self) -> Tensor:
        """``[N]`` long: the targets of :attr:`corrupted_logits`' rows, as its columns (``-100``, cross-entropy's
        ignore index, for an id outside the output vocabulary: only in evaluation, the training targets are checked
        against it before training)."""
        return self.x0_columns[self.corrupted]

    @cached_property
    def corrupted(self) -> Tensor:
        """``[B, L]`` bool: loss positions whose token was masked or replaced (``x_t != x0``)."""
        return (self.x_t != self.x0) & self.mask

    @cached_property
    def logits(self) -> Tensor:
        """``[B, L, V']``: the denoiser's logits of ``x0`` at every position (computed on first use)."""
        return self.head(self.hidden)

    @cached_property
    def corrupted_logits(self) -> Tensor:
        """``[N, V']``: the logits at the :attr:`corrupted` positions only, in row-major order (``N`` of them; the
        order of ``x0[corrupted]``; their targets are :attr:`corrupted_targets`)."""
        if "logits" in self.__dict__:  # already computed for every position
            return self.logits[self.corrupted]
        return self.head(self.hidden[self.corrupted])

    def scatter(self, rows: Tensor) -> Tensor:
        """Per-position values ``[B, L]`` from per-corrupted-row values ``[N]`` (0 at the other positions)."""
        return scatter_rows(rows, self.corrupted)


class DiscreteLossTerm(LossTerm):
    """A term of the discrete objective: ``weight * forward(inputs)``, per-example ``[B]``.

    Class attributes: ``needs_mask_state`` for terms defined only when the corruption has a ``[MASK]`` state
    that every corrupted token enters (absorbing); ``needs_full_vocabulary`` for terms that need the head over all
    ``V`` ids; the model checks both when it is built.
    """

    needs_mask_state: bool = False
    #: True for terms that read :attr:`DiscreteLossInputs.logits` as a distribution over all ``V`` ids (refused
    #: with an output vocabulary, whose head has ``V' < V`` columns).
    needs_full_vocabulary: bool = False

    @abstractmethod
    def forward(self, inputs: DiscreteLossInputs) -> Tensor:  # type: ignore[override]
        """Per-example loss ``[B]``."""


__all__ = ["DiscreteLossInputs", "DiscreteLossTerm"]
