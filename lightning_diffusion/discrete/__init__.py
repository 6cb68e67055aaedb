"""Discrete (token) diffusion for sequence-to-sequence: absorbing, uniform and mask-and-replace corruption,
masking schedules, MDLM / RDM / D3PM losses, token denoisers and re-masking samplers."""

from lightning_diffusion.discrete.corruption import (
    AbsorbingCorruption,
    Corruption,
    MaskAndReplaceCorruption,
    UniformCorruption,
)
from lightning_diffusion.discrete.denoisers import (
    EncoderDecoderTokenDenoiser,
    PrefixTokenDenoiser,
    TokenDenoiser,
)
from lightning_diffusion.discrete.glancing import Glancing
from lightning_diffusion.discrete.losses import (
    D3PMHybrid,
    DiscreteLossInputs,
    DiscreteLossTerm,
    MaskedDiffusionELBO,
    NeighbourUnlikelihood,
    ReweightedCrossEntropy,
)
from lightning_diffusion.discrete.model import DiscreteDiffusionLM
from lightning_diffusion.discrete.samplers import (
    ConfidenceThresholdSampler,
    DiscreteAncestralSampler,
    DiscreteSampler,
    MaskPredictSampler,
    TauLeapingSampler,
)
from lightning_diffusion.discrete.schedules import (
    CosineMasking,
    LinearMasking,
    MaskingSchedule,
    SpindleMasking,
)

__all__ = [
    "AbsorbingCorruption", "ConfidenceThresholdSampler", "CosineMasking", "Corruption", "D3PMHybrid",
    "DiscreteAncestralSampler", "DiscreteDiffusionLM", "DiscreteLossInputs", "DiscreteLossTerm", "DiscreteSampler",
    "EncoderDecoderTokenDenoiser", "Glancing", "LinearMasking", "MaskAndReplaceCorruption", "MaskPredictSampler", "MaskedDiffusionELBO",
    "MaskingSchedule", "NeighbourUnlikelihood", "PrefixTokenDenoiser", "ReweightedCrossEntropy", "SpindleMasking", "TauLeapingSampler",
    "TokenDenoiser", "UniformCorruption",
]  # fmt: skip
