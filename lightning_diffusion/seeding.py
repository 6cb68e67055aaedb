"""Per-batch reseeding of training randomness, so a resumed run draws exactly what an uninterrupted one would."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch


def step_seed(seed: int, batch_number: int, rank: int) -> int:
    """A 63-bit seed for one training batch of one rank, hashed so nearby batches get unrelated streams."""
    digest = hashlib.blake2b(f"{seed}:{batch_number}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class ReseededTraining:
    """LightningModule mixin: reseeds torch from ``(train_seed, batch number, rank)`` before every training batch
    (as fairseq reseeds every update), so the noise, timesteps and dropout of batch ``n`` do not depend on what
    ran before it. The run's seed is stored in checkpoints by the module (``train_seed``) and reused on resume.
    """

    train_seed: int | None
    _checkpoint_train_seed: int | None
    trainer: Any
    global_rank: int

    def on_fit_start(self) -> None:
        """Fix the training seed: the run's own when resuming (stored in the checkpoint), else the one
        ``seed_everything`` set (``PL_GLOBAL_SEED``), else torch's initial seed."""
        resuming = getattr(self.trainer, "ckpt_path", None) is not None
        if resuming and self._checkpoint_train_seed is not None:
            self.train_seed = int(self._checkpoint_train_seed)
        else:
            env = os.environ.get("PL_GLOBAL_SEED")
            self.train_seed = int(env) if env is not None else torch.initial_seed() % 2**32

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.train_seed is None:
            return
        batch_number = self.trainer.fit_loop.total_batch_idx
        torch.manual_seed(step_seed(self.train_seed, batch_number, self.global_rank))


__all__ = ["ReseededTraining", "step_seed"]
