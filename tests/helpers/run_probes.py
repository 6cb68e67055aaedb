"""Callbacks the resume and distributed tests add to real ``lightning-diffusion`` subprocesses (by class_path,
with this folder on PYTHONPATH): a per-batch recorder, a SIGKILL at a given step, and a dump of the state
that must agree across ranks."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_diffusion import DiffusionLM


class BatchRecorder(Callback):
    """Appends ``{"step", "rank", "loss", "index"}`` per training batch to ``<directory>/rank<r>.jsonl``, flushed
    at once (the process may be killed at any moment)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        row = {
            "step": trainer.global_step,
            "rank": trainer.global_rank,
            "epoch": trainer.current_epoch,
            "loss": float(loss),
            "index": batch.index.tolist(),
            "target_tokens": int(batch.tgt_mask.sum()),
        }
        with (self.directory / f"rank{trainer.global_rank}.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class KillAtStep(Callback):
    """SIGKILLs its own process after optimizer step ``step`` (no clean-up, no exception handlers run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class DumpTrainingState(Callback):
    """Saves every buffer of the module (schedule statistics, timestep-sampler history) per rank at fit end."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        buffers = {name: tensor.detach().cpu().clone() for name, tensor in pl_module.named_buffers()}
        torch.save(buffers, self.directory / f"buffers_rank{trainer.global_rank}.pt")



class TaggedLM(DiffusionLM):
    """A user subclass (no new arguments) for the reload-by-base-class test."""
