"""Silence messages of the libraries underneath that a user of this command cannot act on.

Each entry says why it is noise here; everything else (including warnings that point at a real problem) is left
as it is. Installed by the ``lightning-diffusion`` command only: library users keep their own settings.
"""

from __future__ import annotations

import logging
import warnings

# (regex of the message, why it is noise for our users)
NOISY_WARNINGS: tuple[tuple[str, str], ...] = (
    (r".*isinstance\(treespec, LeafSpec\)", "a torch deprecation inside Lightning's own pytree helper"),
    (r"You are using a custom batch sampler", "our token-budget sampler returns every index (tested)"),
    (r"No seed found, seed set to", "the recipes set seed_everything; resumed runs reuse the checkpoint's seed"),
    (
        r"You're using the WeightAveraging callback, but loading a checkpoint outside the 'fit' stage",
        "checkpoints of EMA runs already hold the averaged weights, which validate/test/predict use",
    ),
)
TIP_PREFIX = "\U0001f4a1 Tip:"  # Lightning's advertisements for its cloud services
# (start of a log message, why it is noise for our users)
NOISY_LOG_MESSAGES: tuple[tuple[str, str], ...] = (
    (TIP_PREFIX, "advertisements for Lightning's cloud services"),
    ("TPU available: False", "no TPU support here; the GPU line (kept) says whether an accelerator was found"),
)


class _DropNoise(logging.Filter):
    """Drops the log messages of ``NOISY_LOG_MESSAGES``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(tuple(start for start, _why in NOISY_LOG_MESSAGES))


def quiet_known_noise() -> None:
    """Install the warning filters and the logging filter (idempotent)."""
    for pattern, _why in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())


__all__ = ["NOISY_LOG_MESSAGES", "NOISY_WARNINGS", "quiet_known_noise"]
