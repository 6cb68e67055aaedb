"""ParameterSummary: the model summary printed when fitting starts, with only what a user can read something from.

Lightning's summary also prints a FLOPs column and ``Total FLOPs: 0`` (FLOPs are only counted for a module with an
``example_input_array``, which these models do not have) and module train/eval-mode counts; this one prints the
top-level parts with their parameter counts, and the totals.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_summary.model_summary import (
    get_formatted_model_size,
    get_human_readable_count,
)

SHOWN_COLUMNS = (" ", "Name", "Type", "Params", "In sizes", "Out sizes")


class ParameterSummary(ModelSummary):
    """A :class:`~lightning.pytorch.callbacks.ModelSummary` without FLOPs and module-mode counts. Installed by the
    ``lightning-diffusion`` command unless the trainer config names a summary of its own or sets
    ``trainer.enable_model_summary: false``.

    Args:
        max_depth: depth of nested modules listed (0 turns the summary off), as in ``ModelSummary``.
    """

    def __init__(self, max_depth: int = 1) -> None:
        super().__init__(max_depth=max_depth)

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        rank_zero_info(format_summary(summary_data, total_parameters, trainable_parameters, model_size))


def format_summary(
    summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int, model_size: float
) -> str:
    """The table of ``SHOWN_COLUMNS`` present in ``summary_data``, then one line of parameter totals."""
    columns = [(name, [str(cell) for cell in cells]) for name, cells in summary_data if name in SHOWN_COLUMNS]
    widths = [max([len(name), *map(len, cells)]) for name, cells in columns]
    right = {"Params", "In sizes", "Out sizes"}

    def row(cells: list[str]) -> str:
        return " | ".join(
            cell.rjust(width) if name in right else cell.ljust(width)
            for cell, width, (name, _) in zip(cells, widths, columns, strict=True)
        ).rstrip()

    lines = [row([name for name, _ in columns]), "-" * (sum(widths) + 3 * (len(widths) - 1))]
    lines += [row([cells[i] for _, cells in columns]) for i in range(len(columns[0][1]) if columns else 0)]
    frozen = total_parameters - trainable_parameters
    lines.append(
        f"{get_human_readable_count(total_parameters).strip()} parameters"
        f" ({get_human_readable_count(trainable_parameters).strip()} trainable"
        + (f", {get_human_readable_count(frozen).strip()} frozen" if frozen else "")
        + f"), {get_formatted_model_size(model_size)} MB"
    )
    return "\n".join(lines)


__all__ = ["ParameterSummary", "format_summary"]
