"""Timestep samplers for training: uniform, and loss-aware (improved DDPM, section 3.3)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


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
