"""Guidance: condition dropout in training, and guided decoding for both diffusion families.

``Decoding.guidance`` (``--decoding.guidance``, ``generate --guidance W``) wraps the model's denoiser for one decode
call; the samplers are unchanged. See :mod:`lightning_diffusion.guidance.base`.
"""

from lightning_diffusion.guidance.base import Guidance, GuidedDenoiser, check_guidance
from lightning_diffusion.guidance.classifier import ClassifierGuidance, LatentScorer
from lightning_diffusion.guidance.classifier_free import ClassifierFreeGuidance
from lightning_diffusion.guidance.condition_dropout import drop_condition, null_condition_parameter
from lightning_diffusion.guidance.keyword import KeywordScorer

__all__ = [
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "Guidance",
    "GuidedDenoiser",
    "KeywordScorer",
    "LatentScorer",
    "check_guidance",
    "drop_condition",
    "null_condition_parameter",
]
