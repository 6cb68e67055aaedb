"""What a run shows while it trains and decodes: decoded validation samples as text (TensorBoard TEXT, CSV),
learning-rate and per-term loss curves by name, and the progress bar over the diffusion steps."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import RECIPES_DIR, TinyData, make_tiny_overrides
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_diffusion.callbacks import SampleTextLogger, SamplingProgress
from lightning_diffusion.cli import main
from lightning_diffusion.step_progress_bar import StepProgressBar

RECIPE = RECIPES_DIR / "quickstart.yaml"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Any:
    """4 tiny steps of the quickstart recipe (validation at steps 2 and 4) with a TensorBoard and a CSV logger."""
    root = tmp_path_factory.mktemp("visibility")
    loggers = [
        {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(root / "tb")},
        },
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root / "csv")}},
    ]
    overrides = make_tiny_overrides(root, RECIPE, data=tiny_data, max_steps=4, val_check_interval=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["lightning-diffusion"])
        return main(["fit", "-c", str(RECIPE), *overrides, "--trainer.logger", json.dumps(loggers)])


def _logger(cli: Any, kind: type) -> Any:
    found = [logger for logger in cli.trainer.loggers if isinstance(logger, kind)]
    assert len(found) == 1, cli.trainer.loggers
    return found[0]


def test_recipe_callbacks_are_wired(fitted: Any) -> None:
    kinds = {type(callback).__name__ for callback in fitted.trainer.callbacks}
    assert {"SampleTextLogger", "SamplingProgress", "LearningRateMonitor"} <= kinds


def test_samples_csv_has_every_validation(fitted: Any, tiny_data: TinyData) -> None:
    path = Path(_logger(fitted, CSVLogger).log_dir) / "samples.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["step", "index", "source", "hypothesis", "reference"]
    assert [(row["step"], row["index"]) for row in rows] == [
        (s, i) for s in ("2", "4") for i in ("0", "1", "2")
    ]
    pairs = tiny_data.pairs("valid")
    assert [(row["source"], row["reference"]) for row in rows[:3]] == [
        (p["src"], p["tgt"]) for p in pairs[:3]
    ]


def test_samples_as_tensorboard_text(fitted: Any) -> None:
    events = EventAccumulator(_logger(fitted, TensorBoardLogger).log_dir, size_guidance={"tensors": 0})
    events.Reload()
    tag = "val/samples/text_summary"
    assert tag in events.Tags()["tensors"]
    logged = events.Tensors(tag)
    assert [event.step for event in logged] == [2, 4]
    text = logged[-1].tensor_proto.string_val[0].decode("utf-8")
    assert "| # | source | hypothesis | reference |" in text and "step 4" in text


def test_lr_and_per_term_loss_curves_by_name(fitted: Any) -> None:
    path = Path(_logger(fitted, CSVLogger).log_dir) / "metrics.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0])
    terms = [f"train/{term.name}" for term in fitted.model.loss_terms]
    assert len(terms) == 3
    for column in ["train/loss", *terms, "lr-AdamW"]:
        assert column in columns, sorted(columns)
        assert sum(1 for row in rows if row[column]) == 4, column  # one value per training step


def test_sample_logger_skips_a_stale_report(fitted: Any) -> None:
    """Validation without decoding leaves the last report in place: it is not logged a second time."""
    logger = SampleTextLogger()
    calls: list[int] = []
    logger.log_samples = lambda _logger, step, rows, report: calls.append(step)  # type: ignore[method-assign]
    logger.on_validation_end(fitted.trainer, fitted.model)
    logger.on_validation_end(fitted.trainer, fitted.model)
    assert calls == [4] * len(fitted.trainer.loggers)


class RecordingProgress(SamplingProgress):
    def __init__(self) -> None:
        super().__init__(delay=0.0)
        self.calls: list[tuple[int, int]] = []
        self.bars = 0

    def on_sampling_step(self, trainer: Any, pl_module: Any, done: int, total: int) -> None:
        self.calls.append((done, total))
        fresh = self._bar is None
        super().on_sampling_step(trainer, pl_module, done, total)
        self.bars += fresh and self.enabled(trainer)


@pytest.mark.parametrize("progress_bar", ["bars", "lines", "off"])
def test_sampling_progress_follows_the_steps(
    fitted: Any, progress_bar: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sampling bars while the trainer's progress bar draws bars (a terminal); none when it logs lines (stderr is a
    file or a pipe) or is off."""
    monkeypatch.setattr(fitted.datamodule, "eval_max_tokens", 128)  # several validation batches
    progress = RecordingProgress()
    bar = {"bars": [StepProgressBar(interactive=True)], "lines": [StepProgressBar(interactive=False)], "off": []}
    trainer = Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=progress_bar != "off", callbacks=[progress, *bar[progress_bar]],
    )  # fmt: skip
    capsys.readouterr()
    trainer.validate(fitted.model, datamodule=fitted.datamodule, verbose=False)
    steps = fitted.model.sampler.steps
    assert steps == 3
    batches = int(trainer.num_val_batches[0])
    assert batches >= 2
    assert progress.calls == [(i, steps) for i in range(1, steps + 1)] * batches  # every step of every batch
    assert progress._bar is None  # closed after every batch
    assert progress.bars == (batches if progress_bar == "bars" else 0)
    assert ("validate: sampling" in capsys.readouterr().err) == (progress_bar == "bars")
