"""Callbacks: a prediction writer (JSONL, input order), a validation-score history, decoded validation samples
logged as text, a progress bar over the diffusion steps and EMA."""

from __future__ import annotations

import csv
import html
import re
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, EMAWeightAveraging
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from lightning_diffusion.data.jsonl import jsonl_line
from lightning_diffusion.evaluation import EvaluationReport


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
                handle.write(jsonl_line(row))
        self.written = path
        settings = pl_module.decoding_settings() if hasattr(pl_module, "decoding_settings") else ""
        rank_zero_info(f"wrote {len(unique)} predictions to {path}\n  decoding: {settings}")


class ValidationHistory(Callback):
    """Keeps every validation score of a run and prints the history when fitting ends, so a run shows
    whether it learned (first score against last)."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []  # EvaluationReport.as_dict(samples=False) per validation
        self._last: EvaluationReport | None = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        report = getattr(pl_module, "last_report", None)
        if isinstance(report, EvaluationReport) and report.stage == "val" and report is not self._last:
            self._last = report
            self.history.append(report.as_dict(samples=False))

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
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


SAMPLE_COLUMNS = ("step", "index", "source", "hypothesis", "reference")


def _markdown_cell(text: str) -> str:
    """``text`` as one Markdown table cell: HTML-escaped, on one line, with ``|`` and emphasis characters escaped."""
    text = " ".join(html.escape(str(text), quote=False).splitlines())
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", text)


class SampleTextLogger(Callback):
    """After each validation, logs a few decoded samples (source, hypothesis, reference) as text, next to the
    scores: to TensorBoard as a Markdown table (``add_text``, tab TEXT), to a CSV logger as rows of
    ``<log_dir>/samples.csv`` (columns ``step, index, source, hypothesis, reference``), and to any other logger
    that has ``log_text`` (e.g. Weights & Biases). Rank zero only; the sanity check is skipped.

    The samples are the module's ``last_report.samples`` (an :class:`EvaluationReport`): the first ``log_samples`` validation sentences, so
    at most ``min(num_samples, model.log_samples)`` are logged.

    Args:
        num_samples: samples logged per validation.
        tag: TensorBoard tag / ``log_text`` key.
        csv_name: file name in a CSV logger's ``log_dir``.
    """

    def __init__(self, num_samples: int = 3, tag: str = "val/samples", csv_name: str = "samples.csv") -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.tag = tag
        self.csv_name = csv_name
        self._logged: EvaluationReport | None = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        report = getattr(pl_module, "last_report", None)
        if trainer.sanity_checking or not isinstance(report, EvaluationReport) or report.stage != "val":
            return
        if report is self._logged:
            return  # a stale report (validation without decoding) is not logged twice
        self._logged = report
        rows = list(report.samples)[: self.num_samples]
        if not rows or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            self.log_samples(logger, report.step, rows, report)

    def log_samples(self, logger: Logger, step: int, rows: list[dict[str, Any]], report: EvaluationReport) -> None:
        """Write ``rows`` to one logger (TensorBoard text, CSV file, or ``log_text``)."""
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(self.tag, self.markdown(step, rows, report), global_step=step)
        elif isinstance(logger, CSVLogger):
            path = Path(logger.log_dir) / self.csv_name
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.is_file() or path.stat().st_size == 0
            with path.open("a", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL)
                if new:
                    writer.writerow(SAMPLE_COLUMNS)
                writer.writerows(self._records(step, rows))
        elif callable(getattr(logger, "log_text", None)):
            records = self._records(step, rows)
            logger.log_text(key=self.tag, columns=list(SAMPLE_COLUMNS), data=records, step=step)  # type: ignore[attr-defined]

    @staticmethod
    def _records(step: int, rows: list[dict[str, Any]]) -> list[list[Any]]:
        return [[step, *(row.get(key, "") for key in SAMPLE_COLUMNS[1:])] for row in rows]

    @staticmethod
    def markdown(step: int, rows: list[dict[str, Any]], report: EvaluationReport) -> str:
        """A Markdown table of the samples, under a line with the step, BLEU, output health and decoding settings."""
        head = f"step {step}, BLEU {report.bleu:.2f} ({_markdown_cell(report.health())})"
        if report.settings:
            head += f"; decoding: {_markdown_cell(report.settings)}"
        lines = [head, "", "| # | source | hypothesis | reference |", "|---:|---|---|---|"]
        for row in rows:
            cells = [_markdown_cell(row.get(key, "")) for key in SAMPLE_COLUMNS[1:]]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class SamplingProgress(Callback):
    """A tqdm bar (stderr, cleared when done) over the diffusion steps of each batch decoded in validation, test and
    predict, so a long sampling run shows it is moving. Shown on rank zero only, only while the trainer's progress
    bar is enabled and draws bars (stderr is a terminal), and only once a batch has been sampling for ``delay``
    seconds (short batches draw nothing).

    The module calls :meth:`on_sampling_step` from the sampler's ``on_step(done, total)`` (see
    ``Seq2SeqModule._decode_batch``); models without sampling steps (autoregressive search) never call it.

    Args:
        delay: seconds a batch samples before its bar appears.
    """

    def __init__(self, delay: float = 2.0) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        self.delay = delay
        self._bar: Any = None

    @staticmethod
    def enabled(trainer: Trainer) -> bool:
        """Rank zero, with the trainer's progress bar on and drawing bars: its ``interactive`` (see
        :class:`~lightning_diffusion.step_progress_bar.StepProgressBar`), else whether stderr is a terminal."""
        bar = trainer.progress_bar_callback
        if not trainer.is_global_zero or bar is None:
            return False
        interactive = getattr(bar, "interactive", None)
        return bool(interactive) if interactive is not None else _isatty(sys.stderr)

    def on_sampling_step(self, trainer: Trainer, pl_module: LightningModule, done: int, total: int) -> None:
        """Advance the bar to ``done`` of ``total`` steps (a new bar when a new batch starts)."""
        if not self.enabled(trainer):
            return
        if self._bar is not None and (done <= self._bar.n or self._bar.total != total):
            self.close()  # a new batch began
        if self._bar is None:
            from tqdm import tqdm

            stage = getattr(trainer.state.stage, "value", trainer.state.stage) or "decode"
            self._bar = tqdm(
                total=total, desc=f"{stage}: sampling", unit="step", leave=False, file=sys.stderr, delay=self.delay
            )
        self._bar.update(done - self._bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        """Close (and clear) the current bar, if any."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.close()

    on_test_batch_end = on_predict_batch_end = on_validation_batch_end

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.close()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.close()


class AdaptiveScheduleRefit(Callback):
    """Removed: :class:`~lightning_diffusion.schedules.AdaptiveSchedule` refits itself during training
    (``refit_every``, ``refit_warmup``). Kept so that a recipe naming it fails with what to change."""

    def __init__(self, every_n_steps: int = 1000, warmup_steps: int = 1000, schedule_attr: str = "schedule") -> None:
        raise ValueError(
            "AdaptiveScheduleRefit was removed: the AdaptiveSchedule refits itself. Delete the callback and set "
            f"model.schedule.init_args: {{refit_every: {every_n_steps}, refit_warmup: {warmup_steps}}}"
        )


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

    Buffers (noise-schedule tables, timestep-sampler history) are never averaged: they are copied after every
    training batch (also between updates), so validation, checkpoints and the final model use the current ones,
    e.g. the adaptive schedule's table as refit in that batch's training step.

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

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._copy_buffers(pl_module)  # statistics the module's setup() filled in after the average was copied

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Before the swap, which copies buffers in place: in the sanity check (before on_train_start) the average
        # still holds buffers sized before on_fit_start fitted them (output vocabulary, spindle statistics).
        self._copy_buffers(pl_module)
        super().on_validation_epoch_start(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._copy_buffers(pl_module)  # before AveragedModel's own buffer copy, which needs equal shapes
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._copy_buffers(pl_module)  # AveragedModel copies buffers only on its updates (every update_every_n_steps)

    def _copy_buffers(self, pl_module: LightningModule) -> None:
        """Copy every buffer of the module into the average, replacing those whose shape changed (e.g. the
        spindle schedule's statistics, sized from the data in ``setup``)."""
        if self._average_model is None:
            return
        average_module = self._average_model.module
        with torch.no_grad():
            for name, current in pl_module.named_buffers():
                average = average_module.get_buffer(name)
                if average.shape == current.shape:
                    average.copy_(current.to(average.device))
                else:
                    owner_name, _, leaf = name.rpartition(".")
                    owner = average_module.get_submodule(owner_name) if owner_name else average_module
                    owner.register_buffer(leaf, current.detach().clone().to(average.device))
