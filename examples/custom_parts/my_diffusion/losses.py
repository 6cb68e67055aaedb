"""A loss term: token-level contrastive (InfoNCE) loss between predicted and clean target latents."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_diffusion.losses import LossTerm
from lightning_diffusion.types import LossInputs, masked_mean


class TokenContrastiveLoss(LossTerm):
    """InfoNCE over the target positions of each sentence (the contrastive loss of CPC / SimCLR, applied per
    token): position ``i``'s prediction ``x0_hat_i`` must be closer to its own clean latent ``z0_i`` than to the
    clean latents of the sentence's other tokens.

    ``s_ij = cos(x0_hat_i, z0_j) / tau``, ``loss_i = -log( exp(s_ii) / sum_{j in N(i)} exp(s_ij) )``, where
    ``N(i)`` is ``i`` and every loss position ``j`` holding a *different* token id (a repeated word is not a
    negative of itself). Per example: the mean of ``loss_i`` over its loss positions -> ``[B]``.

    The MSE term pulls ``x0_hat`` towards ``z0`` in absolute terms; this term asks only that the prediction
    points at the right word among the sentence's words, and pushes the embeddings of a sentence's different
    words apart (a guard against the embedding collapse of jointly learned embeddings). A position with no
    negatives contributes ``0``.

    Args:
        temperature: ``tau`` (> 0).
        detach_targets: stop the gradient at ``z0`` (then only the denoiser learns from this term).
        weight, name: as in :class:`~lightning_diffusion.losses.LossTerm` (logged as ``train/contrastive``).
    """

    default_name = "contrastive"

    def __init__(
        self,
        weight: float = 1.0,
        temperature: float = 0.1,
        detach_targets: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.detach_targets = detach_targets

    def forward(self, inputs: LossInputs) -> Tensor:
        pred = F.normalize(inputs.x0_hat, dim=-1)  # [B, L, D]
        keys = F.normalize(inputs.z0.detach() if self.detach_targets else inputs.z0, dim=-1)  # [B, L, D]
        scores = pred @ keys.transpose(1, 2) / self.temperature  # [B, L, L]: row i = prediction i
        length = scores.shape[-1]
        eye = torch.eye(length, dtype=torch.bool, device=scores.device)
        different = inputs.target_ids[:, :, None] != inputs.target_ids[:, None, :]  # [B, L, L]
        candidates = (inputs.mask[:, None, :] & different) | eye  # the positive is always a candidate
        scores = scores.masked_fill(~candidates, float("-inf"))
        nll = -scores.log_softmax(-1).diagonal(dim1=1, dim2=2)  # [B, L], finite: s_ii is never masked
        return masked_mean(nll, inputs.mask)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}, detach_targets={self.detach_targets}"
