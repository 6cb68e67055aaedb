"""A callback the quality benchmarks add to every training run (by ``class_path``, from a generated overlay):
it records training time (process CPU seconds and wall seconds) and steps, stops training once a CPU budget is
spent, and saves small snapshots at fixed points of training time for the quality-against-training-time curves."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

# Heavy checkpoint entries a snapshot does not need for evaluation (weights + hyperparameters suffice).
_DROP = ("optimizer_states", "lr_schedulers", "current_model_state", "averaging_state", "callbacks", "loops")


class TrainingClock(Callback):
    """Writes ``<log_dir>/training_clock.json``: the training process's CPU seconds (``time.process_time()``: every
    thread of the process) and wall seconds, both counted from the first training batch (so the tokenizer, data
    loading and model setup are not counted) up to the end of the last training batch, and optimizer steps; at
    every snapshot and at the end.

    With ``cpu_budget_s`` the clock is also the budget: after the training batch at which the process has spent that
    many CPU seconds on training it sets ``trainer.should_stop`` (the trainer then ends the epoch and saves its
    checkpoints as after ``max_time``). CPU seconds, not wall seconds: a machine busy with other jobs slows a run
    down but does not change how much computation it gets.

    Args:
        cpu_budget_s: stop training once this many process CPU seconds were spent on training (None: no budget).
        snapshot_at_cpu_s: save a snapshot when the training CPU seconds first reach each of these values.
        snapshot_every_s: save a snapshot every this many *wall* training seconds (None: none); ignored when
            ``snapshot_at_cpu_s`` is given.
        max_snapshots: at most this many snapshots.

    A snapshot is a checkpoint as the trainer saves it (with the EMA weights when an EMA callback runs) without the
    optimizer state; the CPU and wall seconds spent saving it are excluded from the recorded training time and from
    the budget.
    """

    def __init__(
        self,
        cpu_budget_s: float | None = None,
        snapshot_at_cpu_s: Sequence[float] | None = None,
        snapshot_every_s: float | None = None,
        max_snapshots: int = 10,
    ) -> None:
        if cpu_budget_s is not None and cpu_budget_s <= 0:
            raise ValueError(f"cpu_budget_s must be > 0, got {cpu_budget_s}")
        self.cpu_budget_s = cpu_budget_s
        self.snapshot_at_cpu_s = sorted(float(s) for s in snapshot_at_cpu_s or ())
        self.snapshot_every_s = snapshot_every_s
        self.max_snapshots = max_snapshots
        self.start: float | None = None
        self.start_cpu: float | None = None
        self.excluded = 0.0
        self.excluded_cpu = 0.0
        self.train_seconds = 0.0  # at the end of the last training batch
        self.cpu_seconds = 0.0
        self.budget_reached = False
        self.budget_reached_step: int | None = None
        self.snapshots: list[dict[str, Any]] = []
        self.path: Path | None = None

    def _measure(self) -> None:
        if self.start is None or self.start_cpu is None:
            return
        self.train_seconds = time.perf_counter() - self.start - self.excluded
        self.cpu_seconds = time.process_time() - self.start_cpu - self.excluded_cpu

    def _write(self, trainer: Trainer, finished: bool) -> None:
        if not trainer.is_global_zero or self.path is None:
            return
        data = {
            "finished": finished,
            "steps": int(trainer.global_step),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "train_seconds": round(self.train_seconds, 3),
            "cpu_budget_seconds": self.cpu_budget_s,
            "budget_reached": self.budget_reached,
            "budget_reached_step": self.budget_reached_step,
            "snapshot_save_seconds": round(self.excluded, 3),
            "snapshot_save_cpu_seconds": round(self.excluded_cpu, 3),
            "snapshots": self.snapshots,
        }
        self.path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.path = Path(trainer.log_dir or trainer.default_root_dir) / "training_clock.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.start is None:
            self.start = time.perf_counter()
            self.start_cpu = time.process_time()

    def _snapshot_due(self) -> bool:
        done = len(self.snapshots)
        if done >= self.max_snapshots:
            return False
        if self.snapshot_at_cpu_s:
            return done < len(self.snapshot_at_cpu_s) and self.cpu_seconds >= self.snapshot_at_cpu_s[done]
        if self.snapshot_every_s:
            return self.train_seconds >= self.snapshot_every_s * (done + 1)
        return False

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._measure()
        if self.cpu_budget_s is not None and self.cpu_seconds >= self.cpu_budget_s:
            if not self.budget_reached:
                self.budget_reached = True
                self.budget_reached_step = int(trainer.global_step)
            trainer.should_stop = True
            return  # the final checkpoint is the last point of the curve
        if self._snapshot_due():
            self._save_snapshot(trainer)

    def _save_snapshot(self, trainer: Trainer) -> None:
        began, began_cpu = time.perf_counter(), time.process_time()
        assert self.path is not None
        path = self.path.parent / "snapshots" / f"snapshot-{len(self.snapshots) + 1}.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            for key in _DROP:
                ckpt.pop(key, None)
            torch.save(ckpt, path)
        self.snapshots.append(
            {
                "path": path.name,
                "step": int(trainer.global_step),
                "cpu_seconds": round(self.cpu_seconds, 3),
                "train_seconds": round(self.train_seconds, 3),
            }
        )
        self.excluded += time.perf_counter() - began
        self.excluded_cpu += time.process_time() - began_cpu
        self._write(trainer, finished=False)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, finished=True)
