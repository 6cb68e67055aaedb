"""Stop a run before a non-finite gradient reaches the weights."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn


class FiniteGradientGuard:
    """LightningModule mixin: before every optimizer step, raise ``FloatingPointError`` naming the step and the
    first parameters with a non-finite gradient (a finite loss can still overflow in the backward pass, e.g. in
    bf16). Skipped under fp16 loss scaling, whose scaler skips such steps by design. One device sync per step.
    """

    trainer: Any
    global_step: int
    named_parameters: Any

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return
        params: Iterator[tuple[str, nn.Parameter]] = self.named_parameters()
        grads: list[tuple[str, Tensor]] = [(name, p.grad) for name, p in params if p.grad is not None]
        # A norm is non-finite iff an element is: one fused kernel (as clip_grad_norm_ does), one sync.
        if not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm([g for _, g in grads]))).all()):
            return
        bad = [name for name, g in grads if not bool(torch.isfinite(g).all())]
        raise FloatingPointError(
            f"non-finite gradients at global step {self.global_step} in {len(bad)} parameter(s): "
            f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}; the weights were not updated. Lower the learning "
            "rate, enable gradient clipping (trainer.gradient_clip_val) or train in float32"
        )


__all__ = ["FiniteGradientGuard"]
