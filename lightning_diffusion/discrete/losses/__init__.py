"""Discrete-diffusion loss terms: MDLM's absorbing ELBO, RDM's reweighted loss, D3PM's hybrid loss, and the
neighbours' unlikelihood against repeated words.

The length term is the shared :class:`~lightning_diffusion.losses.LengthNLL`.
"""

from lightning_diffusion.discrete.losses.base import DiscreteLossInputs, DiscreteLossTerm
from lightning_diffusion.discrete.losses.hybrid import D3PMHybrid
from lightning_diffusion.discrete.losses.masked_elbo import MaskedDiffusionELBO
from lightning_diffusion.discrete.losses.neighbour_unlikelihood import NeighbourUnlikelihood
from lightning_diffusion.discrete.losses.reweighted import ReweightedCrossEntropy

__all__ = ["D3PMHybrid", "DiscreteLossInputs", "DiscreteLossTerm", "MaskedDiffusionELBO", "NeighbourUnlikelihood",
           "ReweightedCrossEntropy"]
