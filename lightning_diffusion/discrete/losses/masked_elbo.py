"""MDLM's continuous-time absorbing ELBO as a weighted cross-entropy."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightning_diffusion.discrete.losses.base import DiscreteLossInputs, DiscreteLossTerm


class MaskedDiffusionELBO(DiscreteLossTerm):
    """``E_t [ -alpha'(t) / (1 - alpha(t)) * sum_{l: x_t,l = MASK} -log p(x0_l | x_t) ]`` (Sahoo et al. 2024, eq. 10;
    ``1 / t`` for the linear schedule). The denoiser never predicts ``[MASK]`` and unmasked tokens are carried over
    (SUBS), so only masked positions enter. Per example the sum is divided by the number of loss positions: the
    ELBO in nats per target token.

    Args:
        label_smoothing: mass spread over the vocabulary in each cross-entropy (0 keeps the exact ELBO).
    """

    default_name = "elbo"
    needs_mask_state = True

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0, name: str | None = None) -> None:
        super().__init__(weight, name)
        self.label_smoothing = label_smoothing

    def forward(self, inputs: DiscreteLossInputs) -> Tensor:
        # Absorbing corruption (``needs_mask_state``): the corrupted positions are exactly the [MASK]ed ones.
        rows = F.cross_entropy(
            inputs.corrupted_logits.float(), inputs.corrupted_targets, reduction="none", label_smoothing=self.label_smoothing
        )
        nll = inputs.scatter(rows)  # [B, L], 0 where unmasked (carried over: no loss)
        return (inputs.rate_t * nll).sum(-1) / inputs.mask.to(nll.dtype).sum(-1).clamp_min(1.0)


__all__ = ["MaskedDiffusionELBO"]
