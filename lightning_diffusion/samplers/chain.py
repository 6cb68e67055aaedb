"""The root of every sampler: a rule that walks a chain of ``steps`` denoiser calls.

Continuous samplers (:class:`~lightning_diffusion.samplers.base.Sampler`) and discrete ones
(:class:`~lightning_diffusion.discrete.samplers.base.DiscreteSampler`) both derive from it, so decoding settings
(:class:`~lightning_diffusion.decoding.Decoding`), ``--decoding.sampler`` and ``generate --sampler`` take either;
each model checks that the sampler suits it (``check_decoding``).
"""

from __future__ import annotations


class ChainSampler:
    """A sampler with ``steps`` (the NFE per candidate it asks for) and its settings in words.

    Args:
        steps: number of denoiser calls ``K`` asked for (>= 1).
    """

    def __init__(self, steps: int = 20) -> None:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be >= 1 (an integer), got {steps!r}")
        self.steps = steps

    def describe(self) -> str:
        """Settings in words, printed next to every score."""
        return f"{type(self).__name__}(steps={self.steps})"


__all__ = ["ChainSampler"]
