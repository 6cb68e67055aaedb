"""RDM's reweighted (reparameterized) training objective."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightning_diffusion.discrete.losses.base import DiscreteLossInputs, DiscreteLossTerm
from lightning_diffusion.types import masked_mean


class ReweightedCrossEntropy(DiscreteLossTerm):
    """``lambda(t) * mean_{l corrupted} -log p(x0_l | x_t)`` (Zheng et al. 2023, eq. 7: the reparameterized loss
    routes only the noisy positions, ``b_{t,l} = 0``, into the cross-entropy; its ``lambda_t`` replaces the ELBO's
    ``1 / t``). Here ``lambda(t) = 1 - (1 - floor) t``: RDM's linear reweighting ``1 - (t - 1) / T`` in continuous
    time, with ``floor`` the weight of the most corrupted step (``1 / T`` in the paper). Works for every corruption
    (masked and replaced tokens both count as noisy).

    Args:
        floor: ``lambda(1)`` > 0: below 1 RDM's down-weighting of heavily corrupted examples, 1 = the unweighted
            mean over noisy tokens (as CMLM trains), above 1 an up-weighting of them.
        label_smoothing: RDM trains its translation models with 0.1 (fairseq's label-smoothed cross-entropy).
        token_mean: normalise by the batch's noisy tokens (fairseq's criterion, which RDM and CMLM train with: an
            example counts in proportion to its noisy tokens, so heavily masked examples weigh more); False = a
            mean per example first (every example counts the same, however few tokens were noised).
    """

    default_name = "rdm"

    def __init__(
        self, weight: float = 1.0, floor: float = 0.05, label_smoothing: float = 0.1, token_mean: bool = True, name: str | None = None
    ) -> None:
        super().__init__(weight, name)
        self.token_mean = token_mean
        if not floor > 0.0:
            raise ValueError(f"ReweightedCrossEntropy: floor must be > 0, got {floor}")
        self.floor = floor
        self.label_smoothing = label_smoothing

    def forward(self, inputs: DiscreteLossInputs) -> Tensor:
        noisy = inputs.corrupted
        rows = F.cross_entropy(  # only the noisy positions count: the head runs on those rows alone
            inputs.corrupted_logits.float(), inputs.corrupted_targets, reduction="none", label_smoothing=self.label_smoothing
        )
        nll = inputs.scatter(rows)  # [B, L]
        lam = 1.0 - (1.0 - self.floor) * inputs.t.to(nll.dtype)
        if self.token_mean:
            # Per example: its summed loss over the batch's mean noisy-token count, so that the batch mean of these
            # values is the token-level mean sum(lambda * nll) / sum(noisy).
            per_example = (nll * noisy.to(nll.dtype)).sum(-1)
            return lam * per_example / noisy.sum(-1).to(nll.dtype).mean().clamp_min(1.0)
        return lam * masked_mean(nll, noisy)


__all__ = ["ReweightedCrossEntropy"]
