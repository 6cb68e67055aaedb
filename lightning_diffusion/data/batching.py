"""Token-budget batching: batches of similar-length examples whose padded size stays under a budget."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Yield lists of dataset indices whose padded cost ``len(batch) * max(length in batch)`` is ``<= max_tokens``.

    Ordering:
      - ``shuffle=False`` (evaluation): indices stably sorted by length, longest first (so an out-of-memory
        batch shows up at once), batches in that order.
      - ``shuffle=True`` (training): a random permutation, stably sorted by length, cut into batches, then the
        batch order is shuffled. With ``bucket_size_multiplier=None`` (default) the sort is global, so equal
        lengths stay in random order: batch contents change from epoch to epoch among examples of equal length,
        and the number of batches is the same every epoch. With an int, the sort is only within chunks of
        ``bucket_size_multiplier * typical batch size`` examples: contents mix more across lengths, but the
        number of batches then varies a little between epochs (e.g. 336-338 on the quickstart data), and
        Lightning fixes ``num_training_batches`` from the first ``len()``, ending a longer epoch early (its
        last batches are skipped). The randomness depends only on ``(seed, epoch)`` (not on
        ``seed + epoch``, so runs with seeds 0 and 1 are not one epoch apart).

    Batches are cut greedily; an example whose length alone exceeds ``max_tokens`` forms its own batch (it is
    never dropped). Every index appears exactly once per epoch (on one replica).

    Epochs: ``set_epoch(epoch)`` picks the epoch; without it, each new iteration advances the epoch by one.
    ``self.sampler`` is the sampler itself because Lightning calls ``dataloader.batch_sampler.sampler.set_epoch``
    (not ``batch_sampler.set_epoch``) at the start of every epoch, with the right epoch also after a resume.
    ``len()`` is exact for the current epoch (the one last set or iterated).

    Distributed: with ``num_replicas > 1`` all replicas compute the same batches (same seed and epoch) and the
    batches are dealt round-robin, replica ``rank`` getting batches ``rank, rank + num_replicas, ...``. The batch
    list is first padded by repeating batches from its start so that every replica gets the same number of
    batches (unequal counts would hang DDP); the repeated examples are seen twice in that epoch, so consumers of
    predictions must dedupe by example index.

    Args:
        lengths: cost length of each example (e.g. source + target tokens); values below 1 count as 1.
        max_tokens: padded-token budget per batch.
        shuffle: shuffle for training (see above) or sort deterministically for evaluation.
        seed: base seed; epoch ``e`` uses a generator seeded with ``(seed, e)``.
        max_batch_size: optional cap on examples per batch.
        bucket_size_multiplier: None for a global length sort (stable batch count), or the chunk size of the
            shuffled length sort in typical batches (see above).
        num_replicas: number of distributed replicas.
        rank: this replica, ``0 <= rank < num_replicas``.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        *,
        shuffle: bool,
        seed: int = 0,
        max_batch_size: int | None = None,
        bucket_size_multiplier: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        if bucket_size_multiplier is not None and bucket_size_multiplier < 1:
            raise ValueError(f"bucket_size_multiplier must be >= 1, got {bucket_size_multiplier}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas=}, {rank=}"
            )
        self.lengths = [max(1, int(length)) for length in lengths]
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.max_batch_size = max_batch_size
        self.bucket_size_multiplier = bucket_size_multiplier
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._epoch_started = False
        self._cache: tuple[int, list[list[int]]] | None = None
        self._skip: tuple[int, int] | None = None
        self._skipped = 0
        self.sampler = self  # see the class docstring: lets Lightning's per-epoch set_epoch reach us

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration (changes the shuffle deterministically)."""
        self.epoch = epoch
        self._epoch_started = False

    def typical_batch_size(self) -> int:
        """Examples per batch at the median length (sizes the shuffle chunks of ``bucket_size_multiplier``)."""
        if not self.lengths:
            return 1
        size = max(1, self.max_tokens // max(1, int(statistics.median(self.lengths))))
        return min(size, self.max_batch_size) if self.max_batch_size is not None else size

    def _order(self, rng: random.Random) -> list[int]:
        """Example indices in the order batches are cut from."""
        indices = list(range(len(self.lengths)))
        if not self.shuffle:
            return sorted(indices, key=lambda i: -self.lengths[i])
        rng.shuffle(indices)
        if self.bucket_size_multiplier is None:
            return sorted(
                indices, key=self.lengths.__getitem__
            )  # stable: equal lengths keep the random order
        chunk = self.bucket_size_multiplier * self.typical_batch_size()
        order: list[int] = []
        for start in range(0, len(indices), chunk):
            order.extend(sorted(indices[start : start + chunk], key=self.lengths.__getitem__))
        return order

    def _cut(self, order: list[int]) -> list[list[int]]:
        """Greedily cut ``order`` into batches under the budget."""
        batches: list[list[int]] = []
        batch: list[int] = []
        longest = 0
        for index in order:
            length = self.lengths[index]
            full = self.max_batch_size is not None and len(batch) >= self.max_batch_size
            if batch and (full or (len(batch) + 1) * max(longest, length) > self.max_tokens):
                batches.append(batch)
                batch, longest = [], 0
            batch.append(index)
            longest = max(longest, length)
        if batch:
            batches.append(batch)
        return batches

    def all_batches(self, epoch: int) -> list[list[int]]:
        """Every replica's batches for ``epoch``, before dealing (no padding)."""
        rng = random.Random(f"{self.seed}:{epoch}")  # str seeds are hashed deterministically (sha512)
        batches = self._cut(self._order(rng))
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def _replica_batches(self, epoch: int) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        batches = self.all_batches(epoch)
        if self.num_replicas > 1 and batches:
            total = math.ceil(len(batches) / self.num_replicas) * self.num_replicas
            batches = batches + [batches[i % len(batches)] for i in range(total - len(batches))]
            batches = batches[self.rank :: self.num_replicas]
        self._cache = (epoch, batches)
        return batches

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Continue an interrupted epoch: make ``epoch`` current and skip its first ``batches_done`` batches of
        this replica in the next iteration (once). ``batches_done >= len()`` moves on to ``epoch + 1``."""
        if batches_done >= len(self._replica_batches(epoch)):
            self.set_epoch(epoch + 1)
            self._skip = None
        else:
            self.set_epoch(epoch)
            self._skip = (epoch, max(0, batches_done))

    @property
    def skipped(self) -> int:
        """Batches of the current epoch skipped by :meth:`resume_at` in the running iteration."""
        return self._skipped

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the epoch is read at the first ``next()``, after Lightning's ``set_epoch`` (Lightning
        # creates the training iterator before it sets the epoch when it resumes from a checkpoint).
        if self._epoch_started:
            self.epoch += 1
        self._epoch_started = True
        batches = self._replica_batches(self.epoch)
        skip = self._skip[1] if self._skip is not None and self._skip[0] == self.epoch else 0
        self._skip = None
        self._skipped = skip
        for batch in batches[skip:]:
            yield list(batch)

    def __len__(self) -> int:
        return len(self._replica_batches(self.epoch))


__all__ = ["TokenBudgetBatchSampler"]
