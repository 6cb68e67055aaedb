"""Timestep samplers for training: uniform, loss-aware (improved DDPM, section 3.3) and CDCD's time warping."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from lightning_diffusion.arguments import check_at_least


class TimestepSampler(nn.Module, ABC):
    """Draws training steps ``t`` in ``1..T`` with importance weights; state lives in buffers (checkpointed).

    Attributes:
        learns: True when :meth:`update` changes the distribution; the LightningModule then gathers the
            ``(t, loss)`` pairs of every rank before calling it, so all ranks keep the same state.
    """

    learns: bool = False

    def __init__(self, num_steps: int) -> None:
        super().__init__()
        self.num_steps = num_steps

    @abstractmethod
    def probabilities(self) -> Tensor:
        """``[T]`` probability of each step ``1..T`` (sums to 1)."""

    def sample(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Returns steps ``t`` ``[B]`` (long, in ``1..T``) and importance weights ``1 / (T p_t)`` ``[B]``."""
        p = self.probabilities().to(device)
        idx = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_steps * p[idx])
        return idx + 1, weights

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record per-example losses ``[B]`` at steps ``t`` ``[B]`` (no-op unless the sampler learns)."""


class UniformTimestepSampler(TimestepSampler):
    """``t ~ U{1..T}``, all weights 1."""

    def probabilities(self) -> Tensor:
        return torch.full((self.num_steps,), 1.0 / self.num_steps)


class LossAwareTimestepSampler(TimestepSampler):
    """Importance sampling by the loss's second moment (improved DDPM eq. 18 / DiffuSeq):
    keep the last ``history`` losses per step, ``p_t ~ sqrt(mean L_t^2)`` mixed with ``uniform_prob``
    uniform; uniform until every step has a full history.

    ``update`` takes the losses of *this* process; multi-process training should gather them before calling it
    so every rank keeps the same history (the LightningModule does).
    """

    learns = True
    loss_history: Tensor
    history_count: Tensor

    def __init__(self, num_steps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__(num_steps)
        self.history = history
        self.uniform_prob = uniform_prob
        self.register_buffer("loss_history", torch.zeros(num_steps, history, dtype=torch.float64))
        self.register_buffer("history_count", torch.zeros(num_steps, dtype=torch.long))

    @property
    def warmed_up(self) -> bool:
        return bool((self.history_count >= self.history).all())

    def probabilities(self) -> Tensor:
        if not self.warmed_up:
            return torch.full((self.num_steps,), 1.0 / self.num_steps, device=self.loss_history.device)
        weights = (self.loss_history**2).mean(dim=-1).sqrt()
        if not torch.isfinite(weights).all() or weights.sum() <= 0:
            return torch.full((self.num_steps,), 1.0 / self.num_steps, device=self.loss_history.device)
        weights = weights / weights.sum()
        probs = weights * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_steps
        return probs.float()

    @torch.no_grad()
    def update(self, t: Tensor, losses: Tensor) -> None:
        for step, loss in zip((t - 1).tolist(), losses.detach().double().tolist(), strict=True):
            count = int(self.history_count[step])
            if count < self.history:
                self.loss_history[step, count] = loss
            else:
                self.loss_history[step, :-1] = self.loss_history[step, 1:].clone()
                self.loss_history[step, -1] = loss
            self.history_count[step] = count + 1


class TimeWarpingTimestepSampler(TimestepSampler):
    """CDCD's time warping (Dieleman et al. 2022, section 4) on the discrete steps ``1..T``.

    CDCD fits a monotone piecewise-linear ``F(t)``, the unnormalised CDF of the training times, to the loss as a
    function of ``t`` (L2 objective) and draws ``t = F^-1(u)``, ``u`` uniform: ``t`` has density ``dF/dt``, so
    training concentrates where the loss (cross-entropy) changes fastest. Here, with discrete steps:

    1. the steps are split into ``bins`` contiguous bins (bin of step ``t``: ``floor((t - 1) bins / T)``), each
       keeping a running mean of the per-example losses drawn in it: a plain mean for its first observations,
       then an exponential moving average with ``decay`` per observation, so the fit follows the loss as the
       model trains;
    2. the bin means are made non-decreasing in ``t`` by isotonic regression (pool adjacent violators), the
       L2-optimal monotone fit: CDCD's objective, on a histogram instead of learned knots;
    3. ``F`` interpolates the fitted values linearly between the bins' centre steps (flat before the first and
       after the last centre), and ``p_t ~ F(t + 1/2) - F(t - 1/2)``, mixed with ``uniform_prob`` of uniform so
       every step keeps being drawn (its loss tracked) and importance weights stay finite.

    ``p`` is uniform until every bin has ``min_count`` observations, and whenever the fitted loss is flat.
    The losses are the module's per-example totals (with a length loss, a constant in ``t`` that does not
    change ``dF/dt``).

    Args:
        num_steps: ``T`` (filled in by the module).
        bins: number of bins (at most ``T``).
        decay: per-observation decay of a bin's moving average once it has about ``1 / (1 - decay)`` losses.
        min_count: observations every bin needs before the warping starts.
        uniform_prob: share of uniform sampling mixed in.
        reweight: return importance weights ``1 / (T p_t)`` so the objective stays the uniform-``t`` one
            (unbiased); False (CDCD, the default) trains on the warped distribution with weights 1.

    ``update`` takes the losses of *this* process; the LightningModule gathers them over ranks first
    (``learns = True``), so every rank and checkpoint holds the same buffers.
    """

    learns = True
    loss_mean: Tensor
    loss_count: Tensor

    def __init__(
        self,
        num_steps: int,
        bins: int = 100,
        decay: float = 0.99,
        min_count: int = 10,
        uniform_prob: float = 0.01,
        reweight: bool = False,
    ) -> None:
        super().__init__(num_steps)
        check_at_least("TimeWarpingTimestepSampler", 1, num_steps=num_steps, bins=bins, min_count=min_count)
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"TimeWarpingTimestepSampler: decay must be in (0, 1], got {decay}")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(
                f"TimeWarpingTimestepSampler: uniform_prob must be in [0, 1], got {uniform_prob}"
            )
        self.bins = min(bins, num_steps)
        self.decay = decay
        self.min_count = min_count
        self.uniform_prob = uniform_prob
        self.reweight = reweight
        self.register_buffer("loss_mean", torch.zeros(self.bins, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros(self.bins, dtype=torch.long))

    def bin_of(self, t: Tensor) -> Tensor:
        """Bin index ``floor((t - 1) bins / T)`` ``[B]`` of steps ``t`` ``[B]`` in ``1..T``."""
        return torch.div((t.long() - 1) * self.bins, self.num_steps, rounding_mode="floor")

    def bin_centres(self) -> Tensor:
        """``[bins]`` the mean step of each bin (float64), the knots of ``F``."""
        steps = torch.arange(1, self.num_steps + 1, device=self.loss_mean.device)
        index = self.bin_of(steps)
        sizes = torch.bincount(index, minlength=self.bins)
        return torch.bincount(index, weights=steps.double(), minlength=self.bins) / sizes

    @property
    def warmed_up(self) -> bool:
        return bool((self.loss_count >= self.min_count).all())

    def fitted_loss(self) -> Tensor:
        """``[bins]`` the bins' mean losses made non-decreasing in ``t`` (isotonic regression, equal weights)."""
        blocks: list[tuple[float, int]] = []  # (sum, size) of pooled runs
        for value in self.loss_mean.tolist():
            total, size = value, 1
            while blocks and blocks[-1][0] / blocks[-1][1] > total / size:
                prev_total, prev_size = blocks.pop()
                total, size = total + prev_total, size + prev_size
            blocks.append((total, size))
        fitted = [total / size for total, size in blocks for _ in range(size)]
        return torch.tensor(fitted, dtype=torch.float64, device=self.loss_mean.device)

    def warp(self, x: Tensor) -> Tensor:
        """``F(x)``: the fitted loss interpolated linearly between bin centres, flat outside them; ``[N] -> [N]``."""
        knots, values = self.bin_centres(), self.fitted_loss()
        if self.bins == 1:
            return values.expand(x.shape)
        right = torch.searchsorted(knots, x.double()).clamp(1, self.bins - 1)
        x0, x1, f0, f1 = knots[right - 1], knots[right], values[right - 1], values[right]
        share = ((x.double() - x0) / (x1 - x0)).clamp(0.0, 1.0)
        return f0 + share * (f1 - f0)

    def probabilities(self) -> Tensor:
        uniform = torch.full((self.num_steps,), 1.0 / self.num_steps, device=self.loss_mean.device)
        if not self.warmed_up:
            return uniform
        steps = torch.arange(1, self.num_steps + 1, device=self.loss_mean.device, dtype=torch.float64)
        density = self.warp(steps + 0.5) - self.warp(steps - 0.5)  # dF over each step's interval, >= 0
        total = density.sum()
        if not torch.isfinite(total) or total <= 0:
            return uniform
        probs = (1.0 - self.uniform_prob) * density / total + self.uniform_prob / self.num_steps
        return probs.float()

    def cdf(self) -> Tensor:
        """``[T]`` the normalised CDF of the sampled steps, ``P(step <= t)`` (ends at 1)."""
        return self.probabilities().double().cumsum(0)

    def sample(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Steps ``t`` ``[B]`` drawn from :meth:`probabilities`; weights ``1 / (T p_t)`` with ``reweight``, else 1."""
        t, weights = super().sample(batch_size, device, generator)
        return t, weights if self.reweight else torch.ones_like(weights)

    @torch.no_grad()
    def update(self, t: Tensor, losses: Tensor) -> None:
        """Fold per-example losses ``[B]`` at steps ``t`` ``[B]`` into their bins' running means."""
        index = self.bin_of(t.to(self.loss_mean.device))
        seen = torch.bincount(index, minlength=self.bins)
        values = losses.detach().to(self.loss_mean.device).double()
        sums = torch.bincount(index, weights=values, minlength=self.bins)
        count = self.loss_count + seen
        n = seen.double()
        # plain running mean while a bin is young (n / count), exponential forgetting later (1 - decay^n)
        rate = torch.maximum(n / count.clamp_min(1), 1.0 - self.decay**n)
        batch_mean = sums / n.clamp_min(1.0)
        moved = self.loss_mean + rate * (batch_mean - self.loss_mean)
        self.loss_mean.copy_(torch.where(seen > 0, moved, self.loss_mean))
        self.loss_count.copy_(count)
