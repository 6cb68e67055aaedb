"""StepProgressBar: training progress as optimizer steps toward the run's end (also across epochs and after a
resume), no ``v_num``, and logged progress lines instead of bars without a terminal. The terminal case through the
real command (a pseudo-terminal) is in tests/test_cli.py."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from lightning_diffusion.step_progress_bar import StepProgressBar, format_duration, progress_line


class LossOnTheBar(BoringModel):
    """BoringModel (64 batches an epoch) that shows its loss on the progress bar."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        self.log("train/loss", out["loss"], prog_bar=True)
        return out


def fit(root: Path, bar: StepProgressBar, max_steps: int, ckpt_path: str | None = None, **options: Any) -> Trainer:
    trainer = Trainer(
        accelerator="cpu", max_steps=max_steps, limit_train_batches=4, limit_val_batches=2, val_check_interval=2,
        num_sanity_val_steps=0, enable_model_summary=False, enable_checkpointing=False,
        logger=CSVLogger(str(root)), callbacks=[bar], **options,
    )  # fmt: skip
    trainer.fit(LossOnTheBar(), ckpt_path=ckpt_path)
    return trainer


def screens(err: str) -> list[str]:
    """What a terminal showed, one entry per redraw: the text between carriage returns and newlines."""
    return [part.strip() for part in re.split(r"[\r\n]", err) if part.strip()]


def test_progress_line_and_durations() -> None:
    line = progress_line("train", 1200, 4000, done_here=600, elapsed=100.0, metrics={"train/loss": 7.45512})
    assert line == "step 1200/4000 (30%) | 6.00 steps/s | ETA 7m47s | train/loss 7.455"
    assert progress_line("predict", 3, 10, done_here=3, elapsed=6.0) == "predict: batch 3/10 (30%) | 0.50 batches/s | ETA 14s"
    assert progress_line("train", 5, None, done_here=0, elapsed=0.0) == "step 5"
    assert [format_duration(s) for s in (0.4, 42, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]
    with pytest.raises(ValueError, match="line_every_s"):
        StepProgressBar(line_every_s=-1)


def test_bar_counts_steps_across_epochs_and_from_a_resumed_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    trainer = fit(tmp_path, StepProgressBar(interactive=True), max_steps=10)  # 4 batches an epoch: 3 epochs
    assert trainer.current_epoch >= 2
    shown = screens(capsys.readouterr().err)
    steps = [s for s in shown if s.startswith("step ")]
    assert steps[0].startswith("step 0/10") and steps[-1].startswith("step 10/10 100%")
    assert "train/loss=" in steps[-1] and "ETA" in steps[-1] and "steps/s" in steps[-1]
    assert not [s for s in shown if "v_num" in s or "Epoch" in s or "/-" in s], shown

    ckpt = tmp_path / "step10.ckpt"
    trainer.save_checkpoint(ckpt)
    fit(tmp_path, StepProgressBar(interactive=True), max_steps=16, ckpt_path=str(ckpt))
    steps = [s for s in screens(capsys.readouterr().err) if s.startswith("step ")]
    assert steps[0].startswith("step 10/16") and steps[-1].startswith("step 16/16 100%")  # from the checkpoint's step


def test_epoch_limited_runs_show_the_epoch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fit(tmp_path, StepProgressBar(interactive=True), max_steps=-1, max_epochs=2)
    shown = screens(capsys.readouterr().err)
    assert any(s.startswith("epoch 2/2 step 8/8 100%") for s in shown), shown


def test_without_a_terminal_progress_is_logged_lines_not_bars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fit(tmp_path, StepProgressBar(interactive=False, line_every_s=0), max_steps=6)
    err = capsys.readouterr().err
    assert "\r" not in err and "|" not in err  # nothing drawn
    lines = [r.getMessage() for r in caplog.records]
    train = [line for line in lines if line.startswith("step ")]
    assert train[0].startswith("step 1/6 (17%)") and train[-1].startswith("step 6/6 (100%)")
    assert all("train/loss" in line and "v_num" not in line for line in train)
    assert "validate: batch 2/2 (100%)" in "\n".join(lines)

    caplog.clear()
    fit(tmp_path, StepProgressBar(interactive=False, line_every_s=3600), max_steps=6)
    assert not [r for r in caplog.records if r.getMessage().startswith(("step ", "validate: "))]  # occasional only
