"""Training loss terms. Each is switchable, weighted, and logged as ``train/<name>``.

Every term returns a per-example loss ``[B]`` (mean over that example's loss positions), so the module can
apply importance weights and feed the loss-aware timestep sampler.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_diffusion.neighbour_unlikelihood import neighbour_unlikelihood
from lightning_diffusion.types import LossInputs, masked_mean, scatter_rows


class LossTerm(nn.Module, ABC):
    """One term of the objective: ``weight * forward(inputs)``.

    Args:
        weight: multiplier in the weighted sum.
        name: log name (``train/<name>``); defaults to the class's ``default_name``.
    """

    default_name: str = "loss"
    #: True for terms that need a length predictor (the module checks this when it is built).
    needs_length_predictor: bool = False
    #: True for terms that read the denoiser's output at the source positions (``LossInputs.source_x0``).
    needs_source_output: bool = False

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        super().__init__()
        self.weight = weight
        self.name = name or self.default_name

    @abstractmethod
    def forward(self, inputs: LossInputs) -> Tensor:
        """Per-example loss ``[B]``."""

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weight={self.weight}"


def rounding_nll(inputs: LossInputs, logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """``-log p(y | latents)`` under the tied head, averaged over each example's loss positions ``[B]``; the head
    and softmax run on the ``N`` loss positions alone (``[N, V']``, not ``[B, L, V]``: padding costs nothing; label
    smoothing spreads over the ``V'`` ids the head scores). A target the head cannot emit (evaluation only) is left
    out (cross-entropy's ignore index).

    Args:
        logits: ``[N, V']`` the head's logits at the loss positions (of ``z0`` for the rounding term, of ``x0_hat``
            for the anchor: :attr:`LossInputs.x0_hat_logits`).
    """
    rows = F.cross_entropy(
        logits.float(),
        inputs.target_columns[inputs.mask],
        reduction="none",
        label_smoothing=label_smoothing,
    )  # [N]
    return masked_mean(scatter_rows(rows, inputs.mask), inputs.mask)


class X0MSE(LossTerm):
    """``||x0_hat - z0||^2`` (mean over the latent width), averaged over target loss positions only
    (DiffuSeq eq. 5's ``L_VLB`` simplification, without diluting it over the source)."""

    default_name = "mse"

    def forward(self, inputs: LossInputs) -> Tensor:
        per_token = ((inputs.x0_hat - inputs.z0) ** 2).mean(-1)
        return masked_mean(per_token, inputs.mask)


class SourceMSE(LossTerm):
    """``||x0_hat_src - Emb(x)||^2`` (mean over the latent width), averaged over each example's real source positions:
    the official DiffuSeq's MSE also covers the clean source prefix, whose input is its own target, so the network
    practises carrying its input through (Gong et al. 2023; their loss averages source and target positions in one
    mean, here the source is a term of its own, with its own weight). Needs a denoiser that returns
    ``source_x0`` (:class:`~lightning_diffusion.denoisers.DiffuSeqDenoiser`)."""

    default_name = "source_mse"
    needs_source_output = True

    def forward(self, inputs: LossInputs) -> Tensor:
        if inputs.source_x0 is None or inputs.source_z0 is None or inputs.source_mask is None:
            raise ValueError(
                "SourceMSE needs a denoiser that runs the source through its network and returns its output there "
                "(lightning_diffusion.denoisers.DiffuSeqDenoiser, without skip preconditioning)"
            )
        per_token = ((inputs.source_x0 - inputs.source_z0) ** 2).mean(-1)
        return masked_mean(per_token, inputs.source_mask)


class RoundingNLL(LossTerm):
    """Rounding term ``-log p(y | z0)`` with the tied head (Diffusion-LM eq. 2): keeps embeddings decodable."""

    default_name = "rounding"

    def forward(self, inputs: LossInputs) -> Tensor:
        return rounding_nll(inputs, inputs.logits(inputs.z0[inputs.mask]))


class AnchorNLL(LossTerm):
    """Difformer's anchor loss ``-log p(y | x0_hat)``, label-smoothed: decode the *prediction*, which stops
    the learnable embeddings from collapsing (Gao et al. 2024, eq. 8)."""

    default_name = "anchor"

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.1, name: str | None = None) -> None:
        super().__init__(weight, name)
        self.label_smoothing = label_smoothing

    def forward(self, inputs: LossInputs) -> Tensor:
        return rounding_nll(inputs, inputs.x0_hat_logits, self.label_smoothing)


class NeighbourUnlikelihood(LossTerm):
    """``-sum_{j = l +- 1, y_j != y_l} log(1 - p(y_j | x0_hat_l))``, averaged over each example's loss positions:
    unlikelihood of the neighbours' words under the head's reading of the prediction (the anchor's logits, shared
    with :class:`AnchorNLL`, so the head runs once), against the repeated words of parallel decoding
    (:mod:`lightning_diffusion.neighbour_unlikelihood`). On a padded canvas (no length predictor) the padding is a
    loss position and a neighbour like any other."""

    default_name = "unlikelihood"

    def forward(self, inputs: LossInputs) -> Tensor:
        # In the head's columns (an output vocabulary's ids only); a word the head cannot emit is no neighbour.
        columns = inputs.target_columns  # -100 where the head cannot emit the id (evaluation only): masked out below
        rows = neighbour_unlikelihood(inputs.x0_hat_logits, columns.clamp_min(0), inputs.mask, inputs.mask & (columns >= 0))
        return masked_mean(scatter_rows(rows, inputs.mask), inputs.mask)


class ScoreInterpolationCE(LossTerm):
    """CDCD's training loss ``-log p(y | z_t, t)`` on the denoiser's own token logits (Dieleman et al. 2022,
    eq. 3), not on ``logits(x0_hat)``: the logits whose softmax the score interpolation averages the embeddings
    with. Needs a denoiser that returns them from ``predict`` (:class:`ScoreInterpolationDenoiser`)."""

    default_name = "ce"

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0, name: str | None = None) -> None:
        super().__init__(weight, name)
        self.label_smoothing = label_smoothing

    def forward(self, inputs: LossInputs) -> Tensor:
        if inputs.prediction_logits is None:
            raise ValueError(
                "ScoreInterpolationCE needs a denoiser that predicts token logits "
                "(lightning_diffusion.denoisers.ScoreInterpolationDenoiser); this one predicts latents"
            )
        nll = F.cross_entropy(
            inputs.prediction_logits.float().transpose(1, 2),
            inputs.target_ids,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )
        return masked_mean(nll, inputs.mask)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, label_smoothing={self.label_smoothing}"


class PriorLoss(LossTerm):
    """The ``L_T`` term: ``||sqrt(abar_T) z0||^2`` (mean over the width), keeps ``z_T`` close to pure noise."""

    default_name = "prior"

    def forward(self, inputs: LossInputs) -> Tensor:
        per_token = (inputs.alpha_bar_final.unsqueeze(-1) * inputs.z0**2).mean(-1)
        return masked_mean(per_token, inputs.mask)


class LengthNLL(LossTerm):
    """Length prediction loss ``CE(length_logits, clamp(len_tgt - len_src + offset))`` (Difformer; weight 0.1)."""

    default_name = "length"
    needs_length_predictor = True

    def __init__(self, weight: float = 0.1, name: str | None = None) -> None:
        super().__init__(weight, name)

    def forward(self, inputs: LossInputs) -> Tensor:
        if inputs.length_logits is None or inputs.length_targets is None:
            raise ValueError("LengthNLL needs the model's length_predictor (none is configured)")
        return F.cross_entropy(inputs.length_logits, inputs.length_targets, reduction="none")
