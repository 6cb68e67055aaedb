"""Lightning data module for source/target text pairs with token-budget batching."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any, Literal

import lightning
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from lightning_diffusion.data.batching import TokenBudgetBatchSampler
from lightning_diffusion.data.examples import Seq2SeqDataset, TokenizedExample, collate_examples
from lightning_diffusion.data.jsonl import read_examples
from lightning_diffusion.data.loader import ResumableDataLoader
from lightning_diffusion.data.tokenizer import (
    TOKENIZER_KINDS,
    SpecialIds,
    TokenizerKind,
    resolve_tokenizer,
    special_ids,
    tokenizer_fingerprint,
)
from lightning_diffusion.types import Seq2SeqBatch

log = logging.getLogger("lightning_diffusion")

Split = Literal["train", "val", "test", "predict"]


def _report(message: str) -> None:
    """Log at INFO on ``lightning_diffusion`` and print on rank zero."""
    log.info(message)
    rank_zero_info(message)


class Seq2SeqDataModule(lightning.LightningDataModule):
    """Source/target text pairs from JSONL (``{"src": ..., "tgt": ...}``), ``.jsonl.gz`` or plain ``.txt``
    (sources only, for prediction), batched under a padded-token budget.

    Paths may be ``builtin:<path>`` for bundled data, e.g. ``builtin:tatoeba_en_es/train.jsonl``.
    Text is tokenized as plain text: a literal ``</s>`` or ``<pad>`` in the data stays characters (it never
    becomes a special token), so byte-level BPE round-trips every string (NFC-normalized).
    The tokenizer, ``vocab_size``, ``pad_id``, ``eos_id``, ``sep_id`` and ``tokenizer_fingerprint`` are
    available right after construction (before ``setup``): the tokenizer is resolved on first access.

    Candidates per source: a model that decodes each source as ``n`` candidates (length beam x noise beam)
    decodes ``n`` times the tokens of its batch. ``set_candidates_per_source(n)`` (default 1) divides the
    validation/test/prediction budget by ``n``: loaders built after the call cut batches of at most
    ``max(1, eval_max_tokens // n)`` tokens (an example longer than that is a batch of its own; nothing is
    dropped, order is kept). The training budget is not changed.

    Distributed training: the loaders use a custom batch sampler that shards batches across ranks itself,
    so run the Trainer with ``use_distributed_sampler=False`` (Lightning 2.6 cannot inject its
    DistributedSampler into a custom batch sampler and raises a TypeError otherwise). Evaluation and
    prediction loaders then repeat a few batches on some ranks so that all ranks get equal counts;
    dedupe predictions by ``batch.index``. (Checked with Lightning 2.6.6, 2 CPU ranks: with
    ``use_distributed_sampler=False`` each rank gets the same number of batches and every example is seen
    each epoch. ``trainer.predict`` wraps the batch sampler and warns "You are using a custom batch sampler
    ... for prediction"; that warning is harmless here, since every index is yielded.)
    Lightning calls ``set_epoch`` on ``dataloader.batch_sampler.sampler``, not on the batch sampler; the
    batch sampler exposes itself as ``.sampler`` so the training shuffle follows ``trainer.current_epoch``,
    after a resume too.

    Args:
        train_file: training pairs (needed for ``fit``; also the tokenizer training text).
        val_file: validation pairs.
        test_file: test pairs.
        predict_file: inputs to translate: JSONL (targets optional) or ``.txt`` (one source per line).
        tokenizer: a local Hugging Face tokenizer directory, loaded. A directory that does not exist is an error
            unless ``tokenizer_train_if_missing``: then a tokenizer of ``tokenizer_kind`` is trained on ``train_file``
            and saved there. If None, one is trained and cached under ``tokenizer_cache_dir`` keyed by the train
            file's contents, ``tokenizer_vocab_size`` and the kind.
        tokenizer_train_if_missing: train and save a tokenizer at ``tokenizer`` when that directory does not exist.
        tokenizer_vocab_size: vocabulary size when training a tokenizer.
        tokenizer_cache_dir: cache directory for trained tokenizers (default
            ``$LIGHTNING_DIFFUSION_CACHE/tokenizers`` or ``~/.cache/lightning_diffusion/tokenizers``).
        tokenizer_kind: what to train when training a tokenizer: ``bpe`` (byte-level BPE), ``unigram`` or
            ``wordpiece`` (no partial-character tokens; see :func:`~lightning_diffusion.data.train_tokenizer`).
            Part of the cache key; ignored when ``tokenizer`` is an existing directory.
        src_key: JSON field holding the source.
        tgt_key: JSON field holding the target (``"tgt"`` and ``"trg"`` are accepted for each other); must
            differ from ``src_key``.
        max_src_len: sources are truncated to this many tokens (the count of truncated ones is reported).
        max_tgt_len: targets are truncated to this many tokens, counting the appended EOS (count reported).
        max_tokens: token budget of a training batch: batch size * longest (source + target + EOS).
        eval_max_tokens: budget for validation/test/prediction batches (default ``max_tokens``), divided by the
            candidates per source (see above).
        max_eval_examples: keep only the first N validation and test examples (fast validation).
        empty_examples: what to do with pairs whose source or target is empty: ``skip`` (drop and count),
            ``keep``, or ``error``. Prediction inputs are never skipped (outputs stay aligned with inputs).
        num_workers: DataLoader worker processes (>= 0).
        seed: seed of the training shuffle (each epoch reshuffles deterministically from ``(seed, epoch)``).
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        tokenizer: str | None = None,
        tokenizer_vocab_size: int = 8000,
        tokenizer_cache_dir: str | None = None,
        tokenizer_kind: TokenizerKind = "bpe",
        tokenizer_train_if_missing: bool = False,
        src_key: str = "src",
        tgt_key: str = "tgt",
        max_src_len: int = 128,
        max_tgt_len: int = 128,
        max_tokens: int = 4096,
        eval_max_tokens: int | None = None,
        max_eval_examples: int | None = None,
        empty_examples: Literal["skip", "keep", "error"] = "skip",
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if max_src_len < 1:
            raise ValueError(f"max_src_len must be >= 1, got {max_src_len}")
        if max_tgt_len < 2:
            raise ValueError(f"max_tgt_len must be >= 2 (it counts the EOS), got {max_tgt_len}")
        if max_tokens < 1 or (eval_max_tokens is not None and eval_max_tokens < 1):
            raise ValueError(
                f"max_tokens and eval_max_tokens must be >= 1, got {max_tokens}, {eval_max_tokens}"
            )
        if max_eval_examples is not None and max_eval_examples < 1:
            raise ValueError(f"max_eval_examples must be >= 1 or None, got {max_eval_examples}")
        if empty_examples not in ("skip", "keep", "error"):
            raise ValueError(f"empty_examples must be 'skip', 'keep' or 'error', got {empty_examples!r}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if src_key == tgt_key:
            raise ValueError(f"src_key and tgt_key must name different fields, both are {src_key!r}")
        if tokenizer_kind not in TOKENIZER_KINDS:
            raise ValueError(
                f"tokenizer_kind must be one of {', '.join(map(repr, TOKENIZER_KINDS))}, got {tokenizer_kind!r}"
            )
        self.save_hyperparameters()
        self.train_file = train_file
        self.val_file = val_file
        self.test_file = test_file
        self.predict_file = predict_file
        self.tokenizer_path = tokenizer
        self.tokenizer_vocab_size = tokenizer_vocab_size
        self.tokenizer_cache_dir = tokenizer_cache_dir
        self.tokenizer_kind: TokenizerKind = tokenizer_kind
        self.tokenizer_train_if_missing = tokenizer_train_if_missing
        self.src_key = src_key
        aliases = ("tgt", "trg") if tgt_key in ("tgt", "trg") else (tgt_key,)
        self.tgt_keys: tuple[str, ...] = tuple(key for key in aliases if key != src_key)
        self.max_src_len = max_src_len
        self.max_tgt_len = max_tgt_len
        self.max_tokens = max_tokens
        self.eval_max_tokens = eval_max_tokens if eval_max_tokens is not None else max_tokens
        self.max_eval_examples = max_eval_examples
        self.empty_examples: Literal["skip", "keep", "error"] = empty_examples
        self.num_workers = num_workers
        self.seed = seed
        self.candidates_per_source = 1
        self._tokenizer: PreTrainedTokenizerFast | None = None
        self._special_ids: SpecialIds | None = None
        self._fingerprint: str | None = None
        self.datasets: dict[str, Seq2SeqDataset] = {}

    # ----------------------------------------------------------------- tokenizer

    @property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        """The tokenizer, loaded or trained on first access."""
        if self._tokenizer is None:
            train_files = [self.train_file] if self.train_file is not None else []
            self._tokenizer = resolve_tokenizer(
                self.tokenizer_path,
                train_files,
                self.tokenizer_vocab_size,
                self.tokenizer_cache_dir,
                src_key=self.src_key,
                tgt_keys=self.tgt_keys,
                kind=self.tokenizer_kind,
                train_if_missing=self.tokenizer_train_if_missing,
            )
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of token ids, ``len(tokenizer)`` (includes added special tokens)."""
        return len(self.tokenizer)

    @property
    def special_ids(self) -> SpecialIds:
        """The tokenizer's special ids (:func:`special_ids`), resolved once: the ones the models decode with."""
        if self._special_ids is None:
            self._special_ids = special_ids(self.tokenizer)
        return self._special_ids

    @property
    def pad_id(self) -> int:
        return self.special_ids.pad

    @property
    def eos_id(self) -> int:
        """The end token appended to targets: the EOS, or the SEP of a tokenizer without EOS."""
        return self.special_ids.eos

    @property
    def sep_id(self) -> int:
        return self.special_ids.sep

    @property
    def tokenizer_fingerprint(self) -> str:
        """sha256 of the tokenizer's vocabulary and special ids (recorded in checkpoints)."""
        if self._fingerprint is None:
            self._fingerprint = tokenizer_fingerprint(self.tokenizer)
        return self._fingerprint

    def save_tokenizer(self, directory: str) -> None:
        """Write the tokenizer into ``directory`` (``save_pretrained``; loadable as ``tokenizer=directory``)."""
        self.tokenizer.save_pretrained(directory)

    # ----------------------------------------------------------------- reading

    def _split_file(self, split: Split) -> str | None:
        return {
            "train": self.train_file,
            "val": self.val_file,
            "test": self.test_file,
            "predict": self.predict_file,
        }[split]

    def _load_split(self, split: Split) -> Seq2SeqDataset:
        """Read, tokenize and truncate one split, reporting what was skipped or truncated."""
        path = self._split_file(split)
        if path is None:
            raise ValueError(f"no {split} file configured (set {split}_file)")
        predicting = split == "predict"
        empty = "keep" if predicting and self.empty_examples == "skip" else self.empty_examples
        examples, stats = read_examples(
            path, src_key=self.src_key, tgt_keys=self.tgt_keys, require_target=not predicting, empty=empty
        )
        _report(stats.summary(path))
        if (
            split in ("val", "test")
            and self.max_eval_examples is not None
            and len(examples) > self.max_eval_examples
        ):
            _report(
                f"{path}: using the first {self.max_eval_examples} of {len(examples)} examples (max_eval_examples)"
            )
            examples = examples[: self.max_eval_examples]
        with_targets = all(ex.tgt is not None for ex in examples)
        if predicting and not with_targets and any(ex.tgt is not None for ex in examples):
            missing = sum(ex.tgt is None for ex in examples)
            _report(f"{path}: {missing} of {len(examples)} examples have no target; references are ignored")

        tok = self.tokenizer
        # The data is plain text: a literal "</s>" or "<pad>" in it is characters, not a special token.
        encode = functools.partial(tok, add_special_tokens=False, split_special_tokens=True)
        src_tokens = encode([ex.src for ex in examples])["input_ids"]
        tgt_tokens: list[list[int]] | None = None
        if with_targets:
            tgt_tokens = encode([ex.tgt or "" for ex in examples])["input_ids"]

        src_cut = sum(len(ids) > self.max_src_len for ids in src_tokens)
        message = f"{path}: truncated {src_cut} of {len(examples)} sources to {self.max_src_len} tokens"
        tgt_room = self.max_tgt_len - 1  # one position for the EOS
        if tgt_tokens is not None:
            tgt_cut = sum(len(ids) > tgt_room for ids in tgt_tokens)
            message += f" and {tgt_cut} targets to {tgt_room} tokens + EOS"
        _report(message)

        items = [
            TokenizedExample(
                index=index,
                src_ids=list(src_tokens[index][: self.max_src_len]),
                tgt_ids=list(tgt_tokens[index][:tgt_room]) if tgt_tokens is not None else None,
                src_text=ex.src,
                tgt_text=ex.tgt if tgt_tokens is not None else None,
            )
            for index, ex in enumerate(examples)
        ]
        return Seq2SeqDataset(items)

    def setup(self, stage: str | None = None) -> None:
        """Read and tokenize the splits ``stage`` needs (each split only once)."""
        splits: dict[str | None, list[Split]] = {
            "fit": ["train", "val"],
            "validate": ["val"],
            "test": ["test"],
            "predict": ["predict"],
            None: ["train", "val", "test", "predict"],
        }
        for split in splits.get(stage, splits[None]):
            required = (stage == "fit" and split == "train") or stage in ("validate", "test", "predict")
            if split in self.datasets:
                continue
            if self._split_file(split) is None:
                if required:
                    raise ValueError(f"stage {stage!r} needs {split}_file, which is not set")
                continue
            self.datasets[split] = self._load_split(split)

    # ----------------------------------------------------------------- loaders

    def set_candidates_per_source(self, n: int) -> None:
        """Each source is decoded as ``n >= 1`` candidates: evaluation and prediction loaders built after this
        call use the budget ``eval_max_tokens // n`` (see :attr:`eval_batch_tokens`)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"candidates per source must be an int >= 1, got {n!r}")
        self.candidates_per_source = n

    @property
    def eval_batch_tokens(self) -> int:
        """Token budget of a validation/test/prediction batch: ``max(1, eval_max_tokens // candidates per source)``."""
        return max(1, self.eval_max_tokens // self.candidates_per_source)

    def collate(self, examples: Sequence[TokenizedExample]) -> Seq2SeqBatch:
        """Pad examples into a :class:`Seq2SeqBatch` (see :func:`collate_examples`)."""
        return collate_examples(examples, pad_id=self.pad_id, eos_id=self.eos_id)

    def target_token_counts(self, vocab_size: int | None = None) -> torch.Tensor:
        """How often each token id occurs in the training targets (each target's EOS included) ``[V]`` (int64):
        the statistics of data-dependent schedules (DiffusionBERT's spindle). Every rank counts the whole
        training split, so all ranks agree without communication."""
        size = vocab_size if vocab_size is not None else self.vocab_size
        counts = torch.zeros(size, dtype=torch.long)
        for ex in self._dataset("train").examples:
            if ex.tgt_ids:
                counts += torch.bincount(torch.tensor(ex.tgt_ids, dtype=torch.long), minlength=size)[:size]
            counts[self.eos_id] += 1
        return counts

    def example_lengths(self, split: Split) -> list[int]:
        """Batching cost length per example: source tokens + target tokens + EOS (``max_tgt_len`` without targets).

        This is the padded size of a concatenated ``[source; target]`` row (DiffuSeq); with separate padded
        source and target tensors the padded total can be slightly larger when one example has the longest
        source and another the longest target.
        """
        return [
            len(ex.src_ids) + (len(ex.tgt_ids) + 1 if ex.tgt_ids is not None else self.max_tgt_len)
            for ex in self._dataset(split).examples
        ]

    def _dataset(self, split: Split) -> Seq2SeqDataset:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test", "predict": "predict"}[split])
        return self.datasets[split]

    def _replicas(self) -> tuple[int, int]:
        """``(num_replicas, rank)`` from the attached trainer, ``(1, 0)`` without one."""
        trainer: Any = self.trainer
        if trainer is not None and trainer.world_size > 1:
            return trainer.world_size, trainer.global_rank
        return 1, 0

    def _loader(self, split: Split, shuffle: bool) -> DataLoader[Any]:
        num_replicas, rank = self._replicas()
        sampler = TokenBudgetBatchSampler(
            self.example_lengths(split),
            self.max_tokens if shuffle else self.eval_batch_tokens,
            shuffle=shuffle,
            seed=self.seed,
            num_replicas=num_replicas,
            rank=rank,
        )
        loader_class = ResumableDataLoader if split == "train" else DataLoader
        return loader_class(
            self._dataset(split),
            batch_sampler=sampler,
            collate_fn=functools.partial(collate_examples, pad_id=self.pad_id, eos_id=self.eos_id),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled token-budget batches of the training split (reshuffled every epoch); the loader's position
        in the epoch is saved in checkpoints, so a resumed run continues with the next batch."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[Any] | list[DataLoader[Any]]:
        """Length-sorted batches of the validation split (``batch.index`` gives input order); ``[]`` without
        a ``val_file``, which tells Lightning to skip validation."""
        if self.val_file is None:
            return []
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader[Any]:
        """Length-sorted batches of the test split; ``batch.index`` gives input order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader[Any]:
        """Length-sorted batches of the prediction inputs; ``batch.index`` gives input order."""
        return self._loader("predict", shuffle=False)

    # ----------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """What checkpoints record about the data: the tokenizer fingerprint."""
        return {"tokenizer_fingerprint": self.tokenizer_fingerprint}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuse a checkpoint trained with a different tokenizer (its token ids would mean other things)."""
        saved = state_dict.get("tokenizer_fingerprint")
        if saved is not None and saved != self.tokenizer_fingerprint:
            raise ValueError(
                f"the checkpoint was trained with tokenizer fingerprint {saved[:12]}..., but this data module's "
                f"tokenizer has {self.tokenizer_fingerprint[:12]}...; pass the same tokenizer directory "
                "(tokenizer=...) or the same train_file and tokenizer_vocab_size used for training"
            )


__all__ = ["Seq2SeqDataModule", "Seq2SeqDataset", "TokenizedExample", "collate_examples"]
