"""Loss terms of discrete diffusion: what they see (:class:`DiscreteLossInputs`) and their base class."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from lightning_diffusion.discrete.corruption.base import Corruption
from lightning_diffusion.losses import LossTerm


@dataclass
class DiscreteLossInputs:
    """Everything a discrete loss term may look at for one training batch.

    Attributes:
        x0: ``[B, L]`` long, the clean target (canvas) ids.
        x_t: ``[B, L]`` long, the corrupted ids (``mask_id`` = ``V`` where masked).
        logits: ``[B, L, V]`` the denoiser's prediction of ``x0`` from ``x_t``.
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
    logits: Tensor
    mask: Tensor
    t: Tensor
    alpha_t: Tensor
    rate_t: Tensor
    alpha_at: Callable[[Tensor], Tensor]
    corruption: Corruption
    mask_id: int
    length_logits: Tensor | None = None
    length_targets: Tensor | None = None

    @property
    def corrupted(self) -> Tensor:
        """``[B, L]`` bool: loss positions whose token was masked or replaced (``x_t != x0``)."""
        return (self.x_t != self.x0) & self.mask


class DiscreteLossTerm(LossTerm):
    """A term of the discrete objective: ``weight * forward(inputs)``, per-example ``[B]``.

    Class attributes: ``needs_mask_state`` for terms defined only when the corruption has a ``[MASK]`` state
    that every corrupted token enters (absorbing); the model checks it when it is built.
    """

    needs_mask_state: bool = False

    @abstractmethod
    def forward(self, inputs: DiscreteLossInputs) -> Tensor:  # type: ignore[override]
        """Per-example loss ``[B]``."""


__all__ = ["DiscreteLossInputs", "DiscreteLossTerm"]
