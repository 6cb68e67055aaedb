"""Argument checks shared by constructors, so a bad recipe value stops with the argument's name."""

from __future__ import annotations

import math


def check_at_least(owner: str, minimum: float, **values: float) -> None:
    """Raise ``ValueError("<owner>: <name> must be >= <minimum>, got <value>")`` for the first value below
    ``minimum`` (NaN included)."""
    for name, value in values.items():
        if not value >= minimum:
            raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")


def check_positive_finite(owner: str, **values: float) -> None:
    """Raise ``ValueError`` naming the first value that is not a finite number > 0."""
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{owner}: {name} must be a finite number > 0, got {value}")
