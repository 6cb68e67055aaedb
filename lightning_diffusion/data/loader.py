"""A training DataLoader that remembers where it is in the epoch, so a resumed run continues with the next
batch instead of restarting (or silently re-shuffling) the interrupted epoch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from lightning_diffusion.data.batching import TokenBudgetBatchSampler


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`TokenBudgetBatchSampler` with Lightning's stateful-loader protocol.

    Lightning saves ``state_dict()`` of the training loader in every checkpoint (under
    ``loops.fit_loop.state_dict.combined_loader``) and calls ``load_state_dict`` before it iterates again when
    resuming. The state is ``{"epoch": e, "batches_done": n}``: the epoch of the running iteration and the
    batches of it this replica has handed out (with ``num_workers > 0`` the workers prefetch ahead, but only
    batches handed to the training loop are counted). A resumed loader skips those ``n`` batches of epoch ``e``
    (without loading them) and then goes on as the uninterrupted run would.
    """

    batch_sampler: TokenBudgetBatchSampler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, TokenBudgetBatchSampler):
            raise TypeError(f"ResumableDataLoader needs a TokenBudgetBatchSampler, got {type(self.batch_sampler).__name__}")
        self._epoch = self.batch_sampler.epoch
        self._batches_done = 0

    def __iter__(self) -> Iterator[Any]:
        started = False
        for batch in super().__iter__():
            if not started:  # the sampler has now picked its epoch and any resume skip
                started = True
                self._epoch = self.batch_sampler.epoch
                self._batches_done = self.batch_sampler.skipped
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Position in the epoch: ``{"epoch", "batches_done"}``."""
        return {"epoch": self._epoch, "batches_done": self._batches_done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue after ``batches_done`` batches of ``epoch`` on the next iteration."""
        epoch, done = int(state_dict["epoch"]), int(state_dict["batches_done"])
        self.batch_sampler.resume_at(epoch, done)
        self._epoch, self._batches_done = epoch, done


__all__ = ["ResumableDataLoader"]
