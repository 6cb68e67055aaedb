"""Learning-rate schedules usable from a recipe, stepped once per optimizer step (``interval: step``).

Each is a :class:`torch.optim.lr_scheduler.LambdaLR` whose first argument is the optimizer, so LightningCLI
builds it from ``class_path``/``init_args`` with the optimizer injected, like ``LinearLR``::

    lr_scheduler:
      class_path: lightning_diffusion.lr_schedules.InverseSqrt
      init_args: {warmup_steps: 4000}

or on the command line ``--model.lr_scheduler lightning_diffusion.lr_schedules.InverseSqrt
--model.lr_scheduler.warmup_steps 4000``. Below, ``n`` is the number of optimizer steps taken so far (the
first update uses ``lr(0)``, as in fairseq and transformers) and ``base_lr`` is the optimizer's ``lr`` (per
parameter group). The factors are small callable objects, so ``state_dict()`` holds only numbers (checkpoints
stay loadable weights-only) and a resumed run continues the schedule it started with.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _check_int(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_total(total_steps: int, warmup_steps: int) -> None:
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps <= warmup_steps:
        raise ValueError(f"total_steps must be an integer > warmup_steps ({warmup_steps}), got {total_steps!r}")


def _check_ratio(min_lr_ratio: float) -> None:
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")


class InverseSqrtFactor:
    """``lr(n) / base_lr`` of :class:`InverseSqrt` for one parameter group."""

    def __init__(self, warmup_steps: int, warmup_init_lr: float, base_lr: float) -> None:
        self.warmup_steps = warmup_steps
        self.warmup_init_lr = warmup_init_lr
        self.base_lr = base_lr

    def __call__(self, n: int) -> float:
        if self.base_lr == 0.0:
            return 0.0
        if n < self.warmup_steps:
            lr = self.warmup_init_lr + n * (self.base_lr - self.warmup_init_lr) / self.warmup_steps
        else:
            lr = self.base_lr * math.sqrt(self.warmup_steps / n)
        return lr / self.base_lr


class InverseSqrt(LambdaLR):
    """fairseq's ``inverse_sqrt``: linear warm-up from ``warmup_init_lr`` to ``base_lr``, then ``1 / sqrt(n)`` decay.

    ``lr(n) = warmup_init_lr + n * (base_lr - warmup_init_lr) / warmup_steps`` for ``n < warmup_steps``;
    ``lr(n) = base_lr * sqrt(warmup_steps / n)`` for ``n >= warmup_steps`` (``base_lr`` at ``n = warmup_steps``).

    Args:
        optimizer: injected by LightningCLI; its ``lr`` is ``base_lr`` (fairseq's ``--lr``).
        warmup_steps: length of the warm-up, >= 1 (fairseq's ``--warmup-updates``, 4000 for Transformer base).
        warmup_init_lr: absolute rate at ``n = 0``, >= 0 (fairseq's ``--warmup-init-lr``: 0 by default with a
            warm-up, so the first update does nothing; 1e-7 is common).
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, warmup_init_lr: float = 0.0) -> None:
        _check_int("warmup_steps", warmup_steps, 1)
        if not warmup_init_lr >= 0.0:
            raise ValueError(f"warmup_init_lr must be >= 0, got {warmup_init_lr!r}")
        self.warmup_steps = warmup_steps
        self.warmup_init_lr = float(warmup_init_lr)
        factors = [
            InverseSqrtFactor(warmup_steps, self.warmup_init_lr, float(group.get("initial_lr", group["lr"])))
            for group in optimizer.param_groups
        ]
        super().__init__(optimizer, factors)


class WarmupDecayFactor:
    """``lr(n) / base_lr`` of :class:`WarmupCosine` (``shape="cosine"``) and :class:`WarmupLinear` (``"linear"``)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float, shape: str) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio
        self.shape = shape

    def __call__(self, n: int) -> float:
        if n < self.warmup_steps:
            return n / self.warmup_steps
        progress = min(1.0, (n - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.shape == "cosine" else 1.0 - progress
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * decay


class _WarmupDecay(LambdaLR):
    """Linear warm-up from 0 to ``base_lr``, then a decay of shape :attr:`shape` to ``min_lr_ratio * base_lr``.

    Args:
        optimizer: injected by LightningCLI; its ``lr`` is ``base_lr``.
        warmup_steps: length of the warm-up, >= 0 (0: start at ``base_lr``).
        total_steps: step at which the rate reaches its minimum, > ``warmup_steps`` (usually ``trainer.max_steps``).
        min_lr_ratio: final rate as a fraction of ``base_lr``, in [0, 1].
    """

    shape = ""

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> None:
        _check_int("warmup_steps", warmup_steps, 0)
        _check_total(total_steps, warmup_steps)
        _check_ratio(min_lr_ratio)
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = float(min_lr_ratio)
        super().__init__(optimizer, WarmupDecayFactor(warmup_steps, total_steps, self.min_lr_ratio, self.shape))


class WarmupCosine(_WarmupDecay):
    """Linear warm-up from 0 to ``base_lr``, then a half cosine down to ``min_lr_ratio * base_lr`` at ``total_steps``.

    ``lr(n) = base_lr * n / warmup_steps`` for ``n < warmup_steps``; then with
    ``p = min(1, (n - warmup_steps) / (total_steps - warmup_steps))``:
    ``lr(n) = base_lr * (r + (1 - r) * (1 + cos(pi * p)) / 2)``, ``r = min_lr_ratio`` (constant after ``total_steps``).
    Arguments: see :class:`_WarmupDecay` (``optimizer, warmup_steps, total_steps, min_lr_ratio=0.0``).
    """

    shape = "cosine"


class WarmupLinear(_WarmupDecay):
    """Linear warm-up from 0 to ``base_lr``, then a linear decay to ``min_lr_ratio * base_lr`` at ``total_steps``.

    ``lr(n) = base_lr * n / warmup_steps`` for ``n < warmup_steps``; then with
    ``p = min(1, (n - warmup_steps) / (total_steps - warmup_steps))``:
    ``lr(n) = base_lr * (r + (1 - r) * (1 - p))``, ``r = min_lr_ratio`` (constant after ``total_steps``).
    Arguments: see :class:`_WarmupDecay` (``optimizer, warmup_steps, total_steps, min_lr_ratio=0.0``).
    """

    shape = "linear"


__all__ = ["InverseSqrt", "WarmupCosine", "WarmupLinear"]
