"""StepProgressBar: training progress as optimizer steps toward the run's end (``step 1200/4000``, ETA), on stderr.

Lightning's default bars count batches per epoch, so a run limited by ``trainer.max_steps`` reads ``Epoch 10/-2``
(``300/149`` after a resume) with a ``v_num`` it cannot use. This bar counts ``trainer.global_step`` toward
``trainer.estimated_stepping_batches`` (``max_steps``, or epochs x batches) over the whole run, starts from the
checkpoint's step when resuming (the rate counts only the steps of this process), and shows no ``v_num``.

On a terminal, log messages (validation reports, Lightning's notices) are written above the bars, never into a
bar's line. When stderr is not a terminal (a log file, a pipe) no bars are drawn: a progress line is logged every
``line_every_s`` seconds instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities import rank_zero_info
from tqdm.contrib.logging import logging_redirect_tqdm

# Loggers whose console output goes through tqdm.write while bars are drawn (Lightning's, where rank_zero_info
# and the module's validation reports log).
BAR_SAFE_LOGGERS = ("lightning.pytorch", "lightning.fabric")
TRAIN_FORMAT = "{desc} {n_fmt}/{total_fmt} {percentage:3.0f}%|{bar}| [{elapsed}, ETA {remaining}, {rate_noinv_fmt}]{postfix}"
OPEN_TRAIN_FORMAT = "{desc} {n_fmt} [{elapsed}, {rate_noinv_fmt}]{postfix}"  # no known end
EVAL_FORMAT = "{desc}{n_fmt}/{total_fmt} batches {percentage:3.0f}%|{bar}| [{elapsed}, ETA {remaining}]"


@dataclass
class _Clock:
    """When a stage started, at which count, its count now and when its last progress line was logged."""

    count: int = 0
    first: int = field(init=False)
    start: float = field(default_factory=time.monotonic)
    last_line: float = field(init=False)

    def __post_init__(self) -> None:
        self.first = self.count
        self.last_line = self.start


def stderr_is_terminal() -> bool:
    """Whether ``sys.stderr`` (as it is now) is a terminal."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def total_steps(trainer: Trainer) -> int | None:
    """The optimizer steps the run will make (``max_steps``, or epochs x batches); None when unknown."""
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # e.g. gradient accumulation that changes between epochs
        return None
    if total is None or not math.isfinite(total) or total <= 0:
        return None
    return int(total)


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar with training shown as optimizer steps over the whole run (``step
    1200/4000``, elapsed time, ETA, steps/s, the logged training metrics without ``v_num``), all bars on stderr.

    Installed by the ``lightning-diffusion`` command unless the trainer config names a progress bar of its own or
    ``trainer.enable_progress_bar`` is false.

    Args:
        refresh_rate: redraw a bar every this many batches (0 turns it off), as in ``TQDMProgressBar``.
        line_every_s: without a terminal, seconds between two logged progress lines of one stage.
        interactive: draw bars (True) or log lines (False); None: bars when stderr is a terminal.
    """

    def __init__(self, refresh_rate: int = 1, line_every_s: float = 30.0, interactive: bool | None = None) -> None:
        if line_every_s < 0:
            raise ValueError(f"line_every_s must be >= 0, got {line_every_s}")
        super().__init__(refresh_rate=refresh_rate)
        self.line_every_s = line_every_s
        self._interactive = interactive
        self._redirect: contextlib.ExitStack | None = None
        self._clocks: dict[str, _Clock] = {}
        self._total_steps: int | None = None

    @property
    def interactive(self) -> bool:
        """Bars (True) or logged lines (False)."""
        return stderr_is_terminal() if self._interactive is None else self._interactive

    # ------------------------------------------------------------------------------------------ bars
    def _bar(self, desc: str, *, position: int = 0, leave: bool = False, fmt: str = EVAL_FORMAT, **kwargs: Any) -> Tqdm:
        return Tqdm(
            desc=desc,
            position=2 * self.process_position + position,
            disable=self.is_disabled or not self.interactive,
            leave=leave,
            dynamic_ncols=True,
            file=sys.stderr,
            bar_format=fmt,
            **kwargs,
        )

    def init_sanity_tqdm(self) -> Tqdm:
        return self._bar("sanity check: ")

    def init_train_tqdm(self) -> Tqdm:
        return self._bar(
            "step",
            leave=True,
            fmt=TRAIN_FORMAT if self._total_steps else OPEN_TRAIN_FORMAT,
            total=self._total_steps,
            initial=self.trainer.global_step,
            unit=" steps",
            smoothing=0,  # the rate over the whole run so far (validation pauses included: they recur)
        )

    def init_validation_tqdm(self) -> Tqdm:
        has_main_bar = self.trainer.state.fn != "validate"
        return self._bar("validation: ", position=int(has_main_bar))

    def init_test_tqdm(self) -> Tqdm:
        return self._bar("test: ")

    def init_predict_tqdm(self) -> Tqdm:
        return self._bar("predict: ")  # cleared when done: the output path is the last line

    @staticmethod
    def _name(bar: Tqdm | None, name: str, dataloader_idx: int) -> None:
        """``validation: `` (``validation 1: `` for a second dataloader) in place of Lightning's
        ``Validation DataLoader 0: ``."""
        if bar is not None and not bar.disable:
            bar.set_description_str(f"{name} {dataloader_idx}: " if dataloader_idx else f"{name}: ", refresh=False)

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        self._name(self._val_progress_bar, "sanity check" if trainer.sanity_checking else "validation", dataloader_idx)

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_test_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        self._name(self._test_progress_bar, "test", dataloader_idx)

    def on_predict_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_predict_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        self._name(self._predict_progress_bar, "predict", dataloader_idx)

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, int | str | float | dict[str, float]]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's version number, not a measurement
        return items

    # ------------------------------------------------------------------------------------------ training
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._total_steps = total_steps(trainer)
        super().on_train_start(trainer, pl_module)
        self._clocks["train"] = _Clock(count=trainer.global_step)

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        """One bar over the whole run: not reset per epoch; the epoch shows in the description when it limits."""
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        if max_epochs is not None and self._train_progress_bar is not None:
            self.train_progress_bar.set_description_str(f"epoch {trainer.current_epoch + 1}/{max_epochs} step", refresh=False)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        bar = self._train_progress_bar
        if bar is not None and not bar.disable and self._should_update(step, bar.total or 0):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()
        if not self.interactive:
            self._tick("train", step, self._total_steps, lambda: self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        bar = self._train_progress_bar
        if bar is not None and not bar.disable:
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    # ------------------------------------------------------------------------------------------ evaluation
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        self._clocks["validate"] = _Clock()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_test_start(trainer, pl_module)
        self._clocks["test"] = _Clock()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._clocks["predict"] = _Clock()

    def on_validation_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        super().on_validation_batch_end(trainer, *args, **kwargs)
        if not trainer.sanity_checking:
            self._eval_tick("validate", self._val_progress_bar)

    def on_test_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        super().on_test_batch_end(trainer, *args, **kwargs)
        self._eval_tick("test", self._test_progress_bar)

    def on_predict_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        super().on_predict_batch_end(trainer, *args, **kwargs)
        self._eval_tick("predict", self._predict_progress_bar)

    def _eval_tick(self, stage: str, bar: Any) -> None:
        clock = self._clocks.get(stage)
        if clock is not None and not self.interactive:
            self._tick(stage, clock.count + 1, bar.total if bar is not None else None)

    # ------------------------------------------------------------------------------------------ lines (no terminal)
    def _tick(self, stage: str, count: int, total: int | None, metrics: Any = None) -> None:
        """Record ``count`` units done in ``stage``; log a :func:`progress_line` when ``line_every_s`` passed since
        the stage's last one (rank zero only: other ranks' bars are disabled)."""
        clock = self._clocks.get(stage)
        if clock is None or self.is_disabled:
            return
        clock.count = count
        now = time.monotonic()
        if now - clock.last_line < self.line_every_s:
            return
        clock.last_line = now
        line = progress_line(
            stage, count, total, done_here=count - clock.first, elapsed=now - clock.start, metrics=metrics() if metrics else None
        )
        rank_zero_info(line)

    # ------------------------------------------------------------------------------------------ messages above the bars
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.is_enabled and self.interactive and self._redirect is None:
            self._redirect = contextlib.ExitStack()
            loggers = [logging.getLogger(name) for name in BAR_SAFE_LOGGERS]
            self._redirect.enter_context(logging_redirect_tqdm(loggers=loggers, tqdm_class=Tqdm))

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_logging()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_logging()

    def _restore_logging(self) -> None:
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_redirect"] = None
        return state


def progress_line(
    stage: str, count: int, total: int | None, *, done_here: int, elapsed: float, metrics: dict[str, Any] | None = None
) -> str:
    """``step 1200/4000 (30%) | 6.10 steps/s | ETA 5m40s | train/loss 7.455`` (``predict: batch 3/10 ...`` for an
    evaluation stage): ``done_here`` of the ``count`` units were done in ``elapsed`` seconds by this process."""
    unit = "step" if stage == "train" else "batch"
    prefix = "" if stage == "train" else f"{stage}: "
    parts = [f"{prefix}{unit} {count}/{total} ({100 * count / total:.0f}%)" if total else f"{prefix}{unit} {count}"]
    rate = done_here / elapsed if elapsed > 0 else 0.0
    if rate > 0:
        parts.append(f"{rate:.2f} {unit}{'es' if unit == 'batch' else 's'}/s")
        if total:
            parts.append(f"ETA {format_duration(max(0, total - count) / rate)}")
    for key, value in (metrics or {}).items():
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return " | ".join(parts)


__all__ = ["StepProgressBar", "format_duration", "progress_line", "stderr_is_terminal", "total_steps"]
