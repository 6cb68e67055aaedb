"""Callbacks: a prediction writer (JSONL, input order) and a validation-score history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, EMAWeightAveraging
from lightning.pytorch.utilities import rank_zero_info


class PredictionWriter(BasePredictionWriter):
    """Writes predictions as JSONL (``source``, ``hypothesis``, and ``reference`` when the input had one), in
    input order, one line per input example, with no duplicates from distributed padding.

    Args:
        output_file: where to write; default ``<trainer.log_dir>/predictions.jsonl``.
    """

    def __init__(self, output_file: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_file = output_file
        self.written: Path | None = None

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        rows = [row for batch in predictions for row in batch]
        if trainer.world_size > 1:
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if not trainer.is_global_zero:
            return
        unique = {row["index"]: row for row in rows}
        path = Path(self.output_file or Path(log_dir or ".") / "predictions.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as handle:
            for index in sorted(unique):
                row = {key: value for key, value in unique[index].items() if key != "index"}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.written = path
        settings = pl_module.decoding_settings() if hasattr(pl_module, "decoding_settings") else ""
        rank_zero_info(f"wrote {len(unique)} predictions to {path}\n  decoding: {settings}")


class ValidationHistory(Callback):
    """Keeps every validation score of a run and prints the history when fitting ends, so a run shows
    whether it learned (first score against last)."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        report = getattr(pl_module, "last_report", None)
        if report and report.get("stage") == "val" and (not self.history or self.history[-1] is not report):
            self.history.append(report)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.history:
            return
        lines = ["validation BLEU over the run:"]
        lines += [f"  step {r['step']:>6}: BLEU {r['bleu']:6.2f}  ROUGE-L {r['rougeL']:5.1f}" for r in self.history]
        first, last = self.history[0], self.history[-1]
        lines.append(
            f"  BLEU {first['bleu']:.2f} -> {last['bleu']:.2f} on {last['sentences']} validation sentences "
            f"({last['settings']})"
        )
        rank_zero_info("\n".join(lines))

    def state_dict(self) -> dict[str, Any]:
        return {"history": [{k: v for k, v in r.items() if k != "samples"} for r in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


class AdaptiveScheduleRefit(Callback):
    """Refits the model's :class:`~lightning_diffusion.schedules.AdaptiveSchedule` every ``every_n_steps``
    optimizer steps once ``warmup_steps`` have passed (SeqDiffuSeq). The module sums the loss statistics over
    all ranks every step (``NoiseSchedule.commit_observations``), so every rank refits the same table.

    Args:
        every_n_steps: refit interval ``K`` in optimizer steps.
        warmup_steps: no refit before this step (the statistics keep accumulating).
        schedule_attr: attribute of the LightningModule holding the schedule.
    """

    def __init__(self, every_n_steps: int = 1000, warmup_steps: int = 1000, schedule_attr: str = "schedule") -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.warmup_steps = warmup_steps
        self.schedule_attr = schedule_attr
        self.refits = 0

    def _schedule(self, pl_module: LightningModule) -> Any:
        schedule = getattr(pl_module, self.schedule_attr, None)
        if schedule is None or not hasattr(schedule, "refit"):
            raise TypeError(
                f"AdaptiveScheduleRefit needs pl_module.{self.schedule_attr} to be an AdaptiveSchedule, "
                f"got {type(schedule).__name__}"
            )
        return schedule

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._schedule(pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step < self.warmup_steps or step % self.every_n_steps or step == getattr(self, "_last_step", -1):
            return
        self._last_step = step
        refit = self._schedule(pl_module).refit()
        self.refits += 1
        pl_module.log("train/schedule_refit_positions", float(refit), rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {"refits": self.refits}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.refits = int(state_dict.get("refits", 0))


def warmup_ema_multi_avg_fn(decay: float) -> Any:
    """EMA update whose decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the
    average follows the weights early in training instead of lagging ~``1 / (1 - decay)`` steps behind."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, weight)

    return update


class EMA(EMAWeightAveraging):
    """Lightning's :class:`~lightning.pytorch.callbacks.EMAWeightAveraging` with a decay warm-up
    (``min(decay, (1 + n) / (10 + n))``), so a 0.9999 EMA is useful after hundreds of steps, not only after
    tens of thousands. Validation, checkpoints and the final weights use the average, as in Lightning.

    Buffers (noise-schedule tables, timestep-sampler history) are never averaged: they are copied.

    Args:
        decay: the long-run EMA decay.
        warmup: use the warm-up (False gives Lightning's plain EMA).
        update_every_n_steps, update_starting_at_step: as in ``EMAWeightAveraging``.
    """

    def __init__(
        self,
        decay: float = 0.9999,
        warmup: bool = True,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
    ) -> None:
        super().__init__(
            use_buffers=False,
            decay=decay,
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
        )
        if warmup:
            self._kwargs.pop("avg_fn", None)
            self._kwargs["multi_avg_fn"] = warmup_ema_multi_avg_fn(decay)
