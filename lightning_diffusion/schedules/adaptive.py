"""SeqDiffuSeq's adaptive per-position noise schedule (Yuan et al. 2024, section 3.3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_diffusion.schedules.base import NoiseSchedule
from lightning_diffusion.schedules.fixed import SqrtSchedule


def interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """1-D linear interpolation like ``numpy.interp``: ``xp`` ``[N]`` non-decreasing, ``fp`` ``[N]``, ``x`` ``[M]``;
    values outside ``xp`` take the end values."""
    idx = torch.searchsorted(xp, x, right=True).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    y0, y1 = fp[idx - 1], fp[idx]
    span = x1 - x0
    weight = torch.where(span > 0, (x - x0) / span.clamp_min(1e-12), torch.zeros_like(x))
    out = y0 + weight.clamp(0, 1) * (y1 - y0)
    out = torch.where(x <= xp[0], fp[0], out)
    return torch.where(x >= xp[-1], fp[-1], out)


class AdaptiveSchedule(NoiseSchedule):
    """A table ``alpha_bar[t, position]`` ``[T + 1, max_length]``, one column per target position, started
    from the sqrt schedule and refit during training so that each position's denoising loss grows linearly in
    ``t``.

    Training records the per-token loss ``mean_D (x0_hat - z0)^2`` into sums and counts per
    ``(t-bin, position)`` (:meth:`observe`); :meth:`commit_observations`, called by the module once per
    training step, sums them over ranks, counts the step and, every ``refit_every`` steps once ``refit_warmup``
    steps have passed, calls :meth:`refit`. The refit makes each position's mean loss monotone in ``t`` and
    re-interpolates ``abar_new(t) = interp(L_target(t), L, abar_at_bins)`` with ``L_target`` linear in ``t``
    through the first and last bins' losses (at the bins' mean steps); then resets the statistics. The levels at
    ``t = 1`` and ``t = T`` are kept, so repeated refits do not shrink the noise range.

    The refit runs inside the training step, before the optimizer step, so the EMA copy (which copies buffers)
    and every checkpoint hold the refitted table. Table, statistics and the step and refit counters are
    buffers: checkpoints hold them, a resumed run refits at the same steps, and inference needs no side file.

    Args:
        num_steps: ``T``.
        max_length: number of target positions with a column of their own (longer ones use the last column).
        num_bins: timestep bins of the loss statistics.
        min_count: a position is refit only when every bin has at least this many recorded tokens.
        s: the sqrt schedule's offset used for the initial table.
        refit_every: refit interval ``K`` in training steps (the recipes: 1000; the official SeqDiffuSeq
            scripts: 10,000-20,000; earlier refits scored worse at CPU scale, benchmarks/RESULTS.md session 14).
        refit_warmup: no refit before this step (the statistics keep accumulating).
    """

    alpha_bar_table: Tensor
    loss_sum: Tensor
    loss_count: Tensor
    train_steps: Tensor
    refits: Tensor

    def __init__(
        self,
        num_steps: int = 2000,
        max_length: int = 128,
        num_bins: int = 100,
        min_count: int = 1,
        s: float = 1e-4,
        refit_every: int = 1000,
        refit_warmup: int = 1000,
    ) -> None:
        super().__init__(num_steps)
        if refit_every < 1:
            raise ValueError(f"AdaptiveSchedule: refit_every must be >= 1, got {refit_every}")
        if refit_warmup < 0:
            raise ValueError(f"AdaptiveSchedule: refit_warmup must be >= 0, got {refit_warmup}")
        self.refit_every = refit_every
        self.refit_warmup = refit_warmup
        self.max_length = max_length
        self.num_bins = min(num_bins, num_steps)
        self.min_count = min_count
        initial = SqrtSchedule(num_steps, s=s).alpha_bar_table
        self.register_buffer("alpha_bar_table", initial[:, None].repeat(1, max_length).contiguous())
        self.register_buffer("loss_sum", torch.zeros(self.num_bins, max_length, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros(self.num_bins, max_length, dtype=torch.float64))
        # This step's observations, not yet added to the statistics (see commit_observations).
        self.register_buffer("pending", torch.zeros(2, self.num_bins, max_length, dtype=torch.float64), persistent=False)
        # Training steps committed and refits done (scalars): a resumed run refits at the same steps.
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("refits", torch.zeros((), dtype=torch.long))

    def _columns(self, length: int, device: torch.device) -> Tensor:
        return torch.arange(length, device=device).clamp(max=self.max_length - 1)

    def alpha_bar(self, t: Tensor, length: int) -> Tensor:
        return self.alpha_bar_table[t][:, self._columns(length, t.device)]

    def bin_of(self, t: Tensor) -> Tensor:
        """Bin index of steps ``t`` in ``1..T`` -> ``0..num_bins-1``."""
        return ((t - 1) * self.num_bins // self.num_steps).clamp(0, self.num_bins - 1)

    @torch.no_grad()
    def observe(self, t: Tensor, per_token_loss: Tensor, mask: Tensor) -> None:
        """Record per-token losses ``[B, L]`` at steps ``t`` ``[B]`` for the positions in ``mask`` ``[B, L]``
        as pending; :meth:`commit_observations` adds them to the statistics (summed over ranks)."""
        b, length = per_token_loss.shape
        cols = self._columns(length, t.device).expand(b, -1)
        bins = self.bin_of(t)[:, None].expand(-1, length)
        flat = (bins * self.max_length + cols).reshape(-1)
        weight = mask.reshape(-1).double()  # no boolean indexing: no host sync on the hot path
        self.pending[0].view(-1).index_add_(0, flat, per_token_loss.reshape(-1).double() * weight)
        self.pending[1].view(-1).index_add_(0, flat, weight)

    @torch.no_grad()
    def commit_observations(self, all_reduce_sum: Callable[[Tensor], Tensor] | None = None) -> None:
        """Add the pending observations to ``loss_sum``/``loss_count``, summed over ranks by ``all_reduce_sum``
        (one collective of ``[2, bins, max_length]``), so every rank (and every checkpoint) holds the
        statistics of the whole global batch; count the training step and :meth:`refit` on step ``n`` when
        ``n >= refit_warmup`` and ``n % refit_every == 0`` (every rank the same table)."""
        step = int(self.train_steps) + 1  # one scalar read per step, before the collective is queued
        pending = self.pending if all_reduce_sum is None else all_reduce_sum(self.pending)
        self.loss_sum.add_(pending[0])
        self.loss_count.add_(pending[1])
        self.pending.zero_()
        self.train_steps.fill_(step)
        if step >= self.refit_warmup and step % self.refit_every == 0:
            self.refit()

    @torch.no_grad()
    def refit(self) -> int:
        """Refit every position whose bins all hold ``min_count`` tokens; reset the statistics; count the refit
        in ``refits``. Training calls it from :meth:`commit_observations`.

        Returns the number of positions refit.
        """
        device = self.alpha_bar_table.device
        steps = torch.arange(1, self.num_steps + 1, device=device)
        bins = self.bin_of(steps)
        # Each bin's mean step (its loss is an average over these steps).
        bin_size = torch.zeros(self.num_bins, dtype=torch.float64, device=device).index_add_(0, bins, torch.ones_like(steps, dtype=torch.float64))
        centers = torch.zeros(self.num_bins, dtype=torch.float64, device=device).index_add_(0, bins, steps.double()) / bin_size
        grid = steps.double()
        refit = 0
        for pos in range(self.max_length):
            counts = self.loss_count[:, pos]
            if bool((counts < self.min_count).any()):
                continue
            loss = torch.cummax(self.loss_sum[:, pos] / counts, dim=0).values  # monotone in t
            if float(loss[-1] - loss[0]) <= 0:
                continue
            column = self.alpha_bar_table[1:, pos].double()
            abar_bins = interp(centers, grid, column)
            # Target loss linear in t through the first and last bins, extended to t = 1 and T, where the levels
            # stay as they are (else every refit would pull abar_1 and abar_T towards the end bins' levels).
            targets = loss[0] + (grid - centers[0]) * (loss[-1] - loss[0]) / (centers[-1] - centers[0])
            xp = torch.cat([targets[:1], loss, targets[-1:]])
            fp = torch.cat([column[:1], abar_bins, column[-1:]])
            new = interp(targets, xp, fp)
            # Non-increasing in t, below abar[0] = 1 and above 0.
            new = torch.cummin(new.clamp(1e-7, 1.0 - 1e-7), dim=0).values
            self.alpha_bar_table[1:, pos] = new.float()
            refit += 1
        self.loss_sum.zero_()
        self.loss_count.zero_()
        self.refits.add_(1)
        return refit

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Checkpoints from before the schedule counted its own steps and refits load with both counters at 0.
        for name in ("train_steps", "refits"):
            state_dict.setdefault(prefix + name, torch.zeros_like(getattr(self, name)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"num_steps={self.num_steps}, max_length={self.max_length}, num_bins={self.num_bins}, "
            f"refit_every={self.refit_every}, refit_warmup={self.refit_warmup}"
        )
