"""A callback the quality benchmarks add to every training run (by ``class_path``, from a generated overlay):
it records training time and steps, and saves small snapshots at fixed training-time intervals for the
quality-against-training-time curves."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

# Heavy checkpoint entries a snapshot does not need for evaluation (weights + hyperparameters suffice).
_DROP = ("optimizer_states", "lr_schedulers", "current_model_state", "averaging_state", "callbacks", "loops")


class TrainingClock(Callback):
    """Writes ``<log_dir>/training_clock.json``: training seconds (from the first training batch, so the
    tokenizer, data loading and model setup are not counted) and optimizer steps, at every snapshot and at
    the end.

    Args:
        snapshot_every_s: save a snapshot every this many training seconds (None: none). A snapshot is a
            checkpoint as the trainer saves it (with the EMA weights when an EMA callback runs) without the
            optimizer state; the seconds spent saving are excluded from the recorded training time.
        max_snapshots: at most this many snapshots.
    """

    def __init__(self, snapshot_every_s: float | None = None, max_snapshots: int = 10) -> None:
        self.snapshot_every_s = snapshot_every_s
        self.max_snapshots = max_snapshots
        self.start: float | None = None
        self.excluded = 0.0
        self.snapshots: list[dict[str, Any]] = []
        self.path: Path | None = None

    def _train_seconds(self) -> float:
        return 0.0 if self.start is None else time.perf_counter() - self.start - self.excluded

    def _write(self, trainer: Trainer, finished: bool) -> None:
        if not trainer.is_global_zero or self.path is None:
            return
        data = {
            "finished": finished,
            "steps": int(trainer.global_step),
            "train_seconds": round(self._train_seconds(), 3),
            "snapshot_save_seconds": round(self.excluded, 3),
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

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.snapshot_every_s or len(self.snapshots) >= self.max_snapshots:
            return
        elapsed = self._train_seconds()
        if elapsed < self.snapshot_every_s * (len(self.snapshots) + 1):
            return
        began = time.perf_counter()
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
            {"path": path.name, "step": int(trainer.global_step), "train_seconds": round(elapsed, 3)}
        )
        self.excluded += time.perf_counter() - began
        self._write(trainer, finished=False)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, finished=True)
