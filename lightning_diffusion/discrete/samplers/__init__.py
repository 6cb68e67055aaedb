"""Discrete samplers: ancestral reverse steps, mask-predict / RDM re-masking, confidence threshold, tau-leaping."""

from lightning_diffusion.discrete.samplers.ancestral import DiscreteAncestralSampler
from lightning_diffusion.discrete.samplers.base import (
    DiscreteSampleOutput,
    DiscreteSampler,
    mean_log_probability,
    predict_positions,
    time_grid,
    token_choice,
)
from lightning_diffusion.discrete.samplers.remasking import MaskPredictSampler, decided_counts, repeated_picks
from lightning_diffusion.discrete.samplers.tau_leaping import TauLeapingSampler
from lightning_diffusion.discrete.samplers.threshold import ConfidenceThresholdSampler

__all__ = [
    "ConfidenceThresholdSampler",
    "DiscreteAncestralSampler",
    "DiscreteSampleOutput",
    "DiscreteSampler",
    "MaskPredictSampler",
    "TauLeapingSampler",
    "decided_counts",
    "mean_log_probability",
    "predict_positions",
    "repeated_picks",
    "time_grid",
    "token_choice",
]
