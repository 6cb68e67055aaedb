"""Token corruption processes of discrete diffusion, in one closed-form family.

States: the ``V`` vocabulary tokens and one extra absorbing ``[MASK]`` state with id ``V`` (the denoiser's input
embedding has ``V + 1`` rows; its output covers the ``V`` tokens only, so it never predicts ``[MASK]``).

Every process here keeps a token with probability ``alpha``, replaces it by a uniformly drawn token with
probability ``r (1 - alpha)`` and masks it with probability ``(1 - r)(1 - alpha)``, where ``r`` is the
``replace_fraction``: ``r = 0`` is absorbing (D3PM-absorbing / MDLM), ``r = 1`` uniform (multinomial diffusion),
``0 < r < 1`` VQ-Diffusion's mask-and-replace. With ``n = r + (1 - r) alpha`` (probability of not being masked):

- marginal (VQ-Diffusion eq. 7-8 in continuous time): ``q(x_t | x0) = alpha onehot(x0) + (n_t - alpha_t) / V
  + (1 - n_t) onehot(MASK)``;
- the step ``s -> t`` (``s < t``): a masked token stays masked; an unmasked one is masked with probability
  ``1 - n_t / n_s``, else kept with probability ``kappa = alpha_t n_s / (alpha_s n_t)`` or redrawn uniformly.
  Composing steps gives back the marginal, so the posterior ``q(x_s | x_t, x0)`` follows from Bayes' rule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_diffusion.discrete.categorical import sample_categorical

_TINY = 1e-12


class Corruption:
    """The forward process ``q(x_t | x0)`` and the posterior its reverse steps need.

    Shapes: ``x0``, ``x_t`` ``[B, L]`` long (``x0`` in ``0..V-1``; ``x_t`` may be ``V`` = ``[MASK]``); ``alpha``
    values ``[B, L]`` or broadcastable (``[B, 1]``); distributions over ``x0`` ``[B, L, V]``, over ``x_s``
    ``[B, L, V + 1]`` (last column: ``[MASK]``).

    Args:
        replace_fraction: ``r``, the share of the corrupted mass that becomes a uniformly drawn token instead
            of ``[MASK]``.
    """

    def __init__(self, replace_fraction: float) -> None:
        if not 0.0 <= replace_fraction <= 1.0:
            raise ValueError(f"{type(self).__name__}: replace_fraction must be in [0, 1], got {replace_fraction}")
        self.replace_fraction = float(replace_fraction)

    @property
    def absorbing(self) -> bool:
        """True when every corrupted token is ``[MASK]`` (``r = 0``): unmasked tokens are then always clean."""
        return self.replace_fraction == 0.0

    @property
    def has_mask(self) -> bool:
        """True when the ``[MASK]`` state is reachable (``r < 1``)."""
        return self.replace_fraction < 1.0

    def not_masked(self, alpha: Tensor) -> Tensor:
        """``n = r + (1 - r) alpha``: probability that a position is not ``[MASK]``."""
        return self.replace_fraction + (1.0 - self.replace_fraction) * alpha

    def describe(self) -> str:
        return type(self).__name__ if self.replace_fraction in (0.0, 1.0) else f"{type(self).__name__}(replace_fraction={self.replace_fraction:g})"

    # ------------------------------------------------------------------ forward
    def sample(self, x0: Tensor, alpha: Tensor, vocab_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x_t ~ q(x_t | x0)`` independently per position: ``[B, L]`` (``[MASK]`` is ``vocab_size``)."""
        alpha = alpha.expand_as(x0).to(torch.float32)
        u = torch.rand(x0.shape, device=x0.device, generator=generator)
        random_tokens = torch.randint(0, vocab_size, x0.shape, device=x0.device, generator=generator)
        x_t = torch.where(u < alpha, x0, random_tokens)
        return torch.where(u >= self.not_masked(alpha), torch.full_like(x0, vocab_size), x_t)

    def prior(self, shape: tuple[int, ...], vocab_size: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """A draw from ``q(x_1)``: ``[MASK]`` with probability ``1 - r``, else a uniform token."""
        placeholder = torch.zeros(shape, dtype=torch.long, device=device)
        return self.sample(placeholder, torch.zeros(shape, device=device), vocab_size, generator)

    def marginal(self, p0: Tensor, alpha: Tensor) -> Tensor:
        """``sum_x0 q(x_t | x0) p0(x0)`` for a distribution ``p0`` ``[B, L, V]`` -> ``[B, L, V + 1]``."""
        a = alpha.expand(p0.shape[:-1]).unsqueeze(-1).to(p0.dtype)
        n = self.not_masked(a)
        total = p0.sum(-1, keepdim=True)
        tokens = a * p0 + (n - a) * total / p0.shape[-1]
        return torch.cat([tokens, (1.0 - n) * total], dim=-1)

    def step_likelihood(self, x_t: Tensor, alpha_s: Tensor, alpha_t: Tensor, vocab_size: int) -> Tensor:
        """``q(x_t | x_s = k)`` for every state ``k`` (the observed ``x_t`` fixed) -> ``[B, L, V + 1]``."""
        a_s = alpha_s.expand(x_t.shape).to(torch.float32)
        a_t = alpha_t.expand(x_t.shape).to(torch.float32)
        n_s, n_t = self.not_masked(a_s), self.not_masked(a_t)
        stay = (n_t / n_s.clamp_min(_TINY)).clamp(0.0, 1.0)  # 1 - P(masked in this step | unmasked)
        keep = (a_t * n_s / (a_s * n_t).clamp_min(_TINY)).clamp(0.0, 1.0)
        masked = x_t == vocab_size
        token_part = (stay * (1.0 - keep) / vocab_size)[..., None].expand(*x_t.shape, vocab_size).clone()
        hit = torch.nn.functional.one_hot(x_t.clamp(max=vocab_size - 1), vocab_size).to(torch.float32)
        token_part = token_part + (stay * keep)[..., None] * hit
        token_part = torch.where(masked[..., None], (1.0 - stay)[..., None].expand_as(token_part), token_part)
        mask_col = masked.to(torch.float32)[..., None]
        return torch.cat([token_part, mask_col], dim=-1)

    def likelihood_given_x0(self, x_t: Tensor, alpha_t: Tensor, vocab_size: int) -> Tensor:
        """``q(x_t | x0 = k)`` for every token ``k`` (the observed ``x_t`` fixed) -> ``[B, L, V]``."""
        return self.step_likelihood(x_t, torch.ones_like(alpha_t.expand(x_t.shape)), alpha_t, vocab_size)[..., :vocab_size]

    # ------------------------------------------------------------------ reverse
    def posterior(self, x_t: Tensor, p0: Tensor, alpha_s: Tensor, alpha_t: Tensor) -> Tensor:
        """``p(x_s | x_t) = sum_x0 q(x_s | x_t, x0) p0(x0)`` for ``s < t`` -> ``[B, L, V + 1]`` (rows sum to 1).

        ``q(x_s | x_t, x0) = q(x_t | x_s) q(x_s | x0) / q(x_t | x0)`` (Bayes; D3PM eq. 3), so with
        ``w(x0) = p0(x0) / q(x_t | x0)`` (0 where ``x0`` cannot have produced ``x_t``) the sum is
        ``q(x_t | x_s) * marginal(w, alpha_s)``. With ``p0`` one-hot at the true ``x0`` it is the exact posterior.
        Where ``p0`` puts no mass on an ``x0`` consistent with ``x_t`` the result stays at ``x_t``.
        """
        vocab_size = p0.shape[-1]
        p0 = p0.to(torch.float32)
        likelihood = self.likelihood_given_x0(x_t, alpha_t, vocab_size)
        w = torch.where(likelihood > 0, p0 / likelihood.clamp_min(_TINY), torch.zeros_like(p0))
        unnormalized = self.step_likelihood(x_t, alpha_s, alpha_t, vocab_size) * self.marginal(w, alpha_s)
        total = unnormalized.sum(-1, keepdim=True)
        stay = torch.nn.functional.one_hot(x_t, vocab_size + 1).to(torch.float32)
        return torch.where(total > _TINY, unnormalized / total.clamp_min(_TINY), stay)

    def reverse_step(
        self, x_t: Tensor, p0: Tensor, alpha_s: Tensor, alpha_t: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``x_s ~ p(x_s | x_t)`` (:meth:`posterior`): ``[B, L]``."""
        return sample_categorical(self.posterior(x_t, p0, alpha_s, alpha_t), generator)


__all__ = ["Corruption"]
