"""Skip preconditioning (EDM's c_skip / c_out in VP form): the limits, an oracle network recovers x0 exactly, and
DiffusionLM applies it wherever the denoiser is called (training, sampling, the EMA copy)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from lightning_diffusion import DiffusionLM
from lightning_diffusion.denoisers import DiffuSeqDenoiser
from lightning_diffusion.preconditioning import SkipPreconditioning
from lightning_diffusion.schedules import SqrtSchedule


def bound(sigma_data: float = 1.0, noise_factor: float = 1.0) -> SkipPreconditioning:
    pre = SkipPreconditioning(sigma_data)
    pre.bind(SqrtSchedule(100), noise_factor)
    return pre


def test_limits_of_the_coefficients() -> None:
    pre = bound(sigma_data=0.7, noise_factor=2.0)
    skip, out = pre.coefficients(torch.tensor([[1.0, 0.0]]))
    assert skip[0, 0, 0] == pytest.approx(1.0) and out[0, 0, 0] == pytest.approx(0.0)  # no noise: the input itself
    assert skip[0, 1, 0] == pytest.approx(0.0) and out[0, 1, 0] == pytest.approx(0.7)  # pure noise: sigma_data * F


@pytest.mark.parametrize("noise_factor", [1.0, 2.0])
def test_an_oracle_network_recovers_x0_exactly(noise_factor: float) -> None:
    torch.manual_seed(0)
    pre = bound(noise_factor=noise_factor)
    x0, eps = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    t = torch.tensor([1, 50, 100])
    abar = pre.schedule.alpha_bar(t, 5)  # type: ignore[union-attr]
    z_t = abar.sqrt()[..., None] * x0 + noise_factor * (1 - abar).sqrt()[..., None] * eps
    skip, out = pre.coefficients(abar)
    oracle = (x0 - skip * z_t) / out  # what the network must output for the mix to be x0
    assert torch.allclose(pre(z_t, t, oracle), x0, atol=1e-5)


def test_diffusion_lm_applies_it_to_every_denoiser_call() -> None:
    torch.manual_seed(0)
    denoiser = functools.partial(DiffuSeqDenoiser, hidden_dim=16, num_layers=1, num_heads=2, ffn_dim=32, latent_dim=8)
    plain = DiffusionLM(denoiser=denoiser, schedule=SqrtSchedule(50), vocab_size=300)
    pre = DiffusionLM(denoiser=denoiser, schedule=SqrtSchedule(50), vocab_size=300, preconditioning=SkipPreconditioning())
    pre.load_state_dict(plain.state_dict())  # same weights: only the mixing differs
    plain.eval(), pre.eval()
    cond = plain.denoiser.encode(torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.bool))
    z_t, t = torch.randn(1, 4, 8), torch.tensor([3])
    raw = plain.denoiser(z_t, t, cond)
    expected = pre.preconditioning(z_t, t, raw)  # type: ignore[misc]
    assert torch.allclose(pre.denoiser(z_t, t, cond), expected, atol=1e-6)
    assert torch.allclose(pre.denoiser(z_t=z_t, t=t, cond=cond), expected, atol=1e-6)  # keyword calls too
    twin = copy.deepcopy(pre)  # what EMA does: the copy mixes with its own schedule
    assert twin.preconditioning.schedule is twin.schedule  # type: ignore[union-attr]
    assert torch.allclose(twin.denoiser(z_t, t, cond), expected, atol=1e-6)
    with pytest.raises(ValueError, match="sigma_data must be a finite number > 0"):
        SkipPreconditioning(0.0)


def test_source_mse_with_preconditioning_says_why_it_cannot_run(tok) -> None:
    """The preconditioning hook mixes the target output only; the source-copy term then has nothing to score."""
    from lightning_diffusion.losses import X0MSE, SourceMSE

    denoiser = functools.partial(DiffuSeqDenoiser, hidden_dim=16, num_layers=1, num_heads=2, ffn_dim=32, latent_dim=8)
    with pytest.raises(ValueError, match=r"\['source_mse'\] cannot run with preconditioning"):
        DiffusionLM(
            denoiser=denoiser, schedule=SqrtSchedule(50), vocab_size=len(tok), preconditioning=SkipPreconditioning(),
            loss_terms=[X0MSE(), SourceMSE()],
        )
