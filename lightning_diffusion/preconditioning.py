"""Skip preconditioning of the x0 prediction (Karras et al. 2022, "EDM", eq. 7 and Table 1, in VP form).

The denoiser's raw output ``F`` is mixed with its own noisy input::

    x0_hat = c_skip(t) * z_t / sqrt(abar_t) + c_out(t) * F(z_t, t, ...)
    sigma^2 = f^2 (1 - abar_t) / abar_t            (noise-to-signal of z_t / sqrt(abar_t), f = train noise factor)
    c_skip  = sd^2 / (sigma^2 + sd^2),   c_out = sigma sd / sqrt(sigma^2 + sd^2)

so at small noise the estimate is the (rescaled) input itself and the network learns only the correction; at large
noise it is the network's output. Written without dividing by ``sqrt(abar_t)`` so ``abar_t -> 0`` is finite::

    c_skip * z_t / sqrt(abar_t) = sd^2 sqrt(abar_t) z_t / (f^2 (1 - abar_t) + sd^2 abar_t)
    c_out = f sqrt(1 - abar_t) sd / sqrt(f^2 (1 - abar_t) + sd^2 abar_t)

:class:`~lightning_diffusion.module.DiffusionLM` installs it as a forward hook on its denoiser, so training, every
sampler and the probe see the same x0.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_diffusion.arguments import check_positive_finite
from lightning_diffusion.schedules.base import NoiseSchedule


class SkipPreconditioning(nn.Module):
    """``x0_hat = c_skip * z_t / sqrt(abar_t) + c_out * F`` (see the module docstring).

    Args:
        sigma_data: standard deviation of the clean latents per dimension (about 1 for N(0, 1) or layer-normed
            word embeddings).
    """

    def __init__(self, sigma_data: float = 1.0) -> None:
        super().__init__()
        check_positive_finite("SkipPreconditioning", sigma_data=sigma_data)
        self.sigma_data = sigma_data
        self.schedule: NoiseSchedule | None = None
        self.noise_factor = 1.0

    def bind(self, schedule: NoiseSchedule, noise_factor: float) -> None:
        """The schedule whose ``abar_t`` and the noise factor ``f`` the mixing uses (set by the model)."""
        object.__setattr__(self, "schedule", schedule)  # not a submodule: the model owns the schedule
        self.noise_factor = noise_factor

    def coefficients(self, abar: Tensor) -> tuple[Tensor, Tensor]:
        """``(c_skip / sqrt(abar), c_out)`` for signal levels ``abar`` ``[B, L]`` -> two ``[B, L, 1]``."""
        abar = abar.unsqueeze(-1)
        sd2, f2 = self.sigma_data**2, self.noise_factor**2
        denom = f2 * (1.0 - abar) + sd2 * abar
        skip = sd2 * abar.sqrt() / denom
        out = self.noise_factor * (1.0 - abar).clamp_min(0.0).sqrt() * self.sigma_data / denom.sqrt()
        return skip, out

    def forward(self, z_t: Tensor, t: Tensor, raw: Tensor) -> Tensor:
        """Mix the network's output ``raw`` ``[B, L, D]`` with its input ``z_t`` ``[B, L, D]`` at steps ``t`` ``[B]``."""
        if self.schedule is None:
            raise RuntimeError("SkipPreconditioning is not bound to a schedule: DiffusionLM binds it")
        skip, out = self.coefficients(self.schedule.alpha_bar(t, z_t.shape[1]).to(z_t.dtype))
        return skip * z_t + out * raw

    def hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> Tensor:
        """A forward hook (``with_kwargs=True``) for the denoiser: its ``(z_t, t, ...)`` and output -> the mixed x0."""
        z_t = args[0] if len(args) > 0 else kwargs["z_t"]
        t = args[1] if len(args) > 1 else kwargs["t"]
        return self(z_t, t, output)

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data}, noise_factor={self.noise_factor}"


__all__ = ["SkipPreconditioning"]
