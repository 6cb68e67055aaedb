"""Callbacks: a prediction writer (JSONL, input order) and a validation-score history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
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
        if not trainer.is_global_zero:
            return
        unique = {row["index"]: row for row in rows}
        path = Path(self.output_file or Path(trainer.log_dir or ".") / "predictions.jsonl")
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
