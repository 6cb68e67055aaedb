"""The base LightningModule of every sequence-to-sequence model: tokenizer and special ids, checkpoint checks,
optimizers, and the Lightning hooks of validation / test / predict (decode with :func:`decode_batch`, score with
:func:`~lightning_diffusion.evaluation.evaluate`, report, write).

Subclasses implement :meth:`Seq2SeqModule.evaluation_loss`, :meth:`Seq2SeqModule.generate`,
:meth:`Seq2SeqModule.check_decoding` and their own ``training_step``, and set ``self.decoding`` (their default
:class:`~lightning_diffusion.decoding.Decoding`, from the recipe).
"""

from __future__ import annotations

import inspect
import os
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_diffusion.checkpoints import CHECKPOINT_KEY, checkpoint_subclass
from lightning_diffusion.data.detokenize import decode_tokens
from lightning_diffusion.data.tokenizer import SpecialIds, special_ids
from lightning_diffusion.decoding import Decoding, collapse_repeats, decode_batch
from lightning_diffusion.evaluation import EvaluationReport, evaluate
from lightning_diffusion.gradient_guard import FiniteGradientGuard
from lightning_diffusion.output_vocabulary import OutputVocabulary, fit_output_vocabulary
from lightning_diffusion.seeding import ReseededTraining
from lightning_diffusion.types import Seq2SeqBatch


class SharedFactory:
    """A factory (optimizer, LR scheduler) that deep copies of the module share instead of copying.

    The factories LightningCLI builds can reference the CLI and its trainer, which under DDP holds process
    group locks; EMA deep-copies the module, and a copied factory would fail there (and is never needed).
    """

    def __init__(self, factory: Callable[..., Any]) -> None:
        self.factory = factory

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.factory(*args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedFactory:
        return self


@dataclass
class Generation:
    """Decoded hypotheses for ``B`` sources.

    Attributes:
        texts: the chosen hypothesis per source.
        nfe: network calls per candidate sequence (sampling steps, x2 under classifier-free guidance, which runs a
            conditional and an unconditional branch per step; generated tokens for autoregressive search).
        candidates: candidates decoded per source (length beam x noise beam; MBR picks one).
    """

    texts: list[str]
    nfe: int
    candidates: int

    @property
    def calls_per_sentence(self) -> int:
        """Sequence evaluations of the denoiser spent per source: ``nfe * candidates``."""
        return self.nfe * self.candidates


class Seq2SeqModule(ReseededTraining, FiniteGradientGuard, LightningModule):
    """Shared machinery of the library's LightningModules.

    Training randomness is reseeded per batch (:class:`~lightning_diffusion.seeding.ReseededTraining`) and
    non-finite gradients stop the run (:class:`~lightning_diffusion.gradient_guard.FiniteGradientGuard`).

    Args:
        optimizer: factory called with the parameters (LightningCLI's ``OptimizerCallable``).
        lr_scheduler: optional factory called with the optimizer; stepped every optimizer step.
        log_samples: decoded validation samples printed after each validation.
        decode_seed: seed of the decoding noise, so validation scores are reproducible.
        decode_during_validation: decode and score BLEU/ROUGE in validation (else only the loss).
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        log_samples: int = 3,
        decode_seed: int = 0,
        decode_during_validation: bool = True,
    ) -> None:
        super().__init__()
        self.optimizer_factory = SharedFactory(optimizer)
        self.lr_scheduler_factory = SharedFactory(lr_scheduler) if lr_scheduler is not None else None
        self.log_samples = log_samples
        self.decode_seed = decode_seed
        self.decode_during_validation = decode_during_validation
        self.tokenizer: Any = None
        self.special_ids: SpecialIds = SpecialIds.library_default()
        self.decoding: Decoding  # set by the subclass: its default decoding settings, from the recipe
        self.tokenizer_fingerprint: str | None = None
        self.checkpoint_tokenizer_fingerprint: str | None = None
        self.checkpoint_step: int | None = None
        self.train_seed: int | None = None
        self._checkpoint_train_seed: int | None = None
        self._outputs: list[dict[str, Any]] = []
        self.last_report: EvaluationReport | None = None

    def save_init_arguments(self, injected: list[str], vocab_size: int) -> None:
        """Record the subclass's constructor arguments as hyperparameters and check ``vocab_size``.

        Built by the CLI, the hyperparameters are the recipe's config (``class_path``/``init_args``), which
        ``load_from_checkpoint`` re-instantiates with no arguments. Built in Python, the ``injected`` parts
        (modules, factories) are left out of them and are passed to ``load_from_checkpoint`` again.
        """
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        if _given_hyperparameters.get() is not None:
            self.save_hyperparameters(frame=caller)
        else:
            self.save_hyperparameters(ignore=injected, frame=caller)
        if vocab_size < 2:
            raise ValueError(
                f"vocab_size is {vocab_size}: it comes from the data module's tokenizer "
                "(the CLI links data.vocab_size to model.init_args.vocab_size)"
            )

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = True,
        **kwargs: Any,
    ) -> Any:
        """Lightning's ``load_from_checkpoint``, but weights-only by default (tensors and plain containers are
        all that is unpickled; a crafted checkpoint cannot run code). For a ready-to-decode model with its
        tokenizer, from a checkpoint or an export directory, see :func:`lightning_diffusion.pretrained.load_pretrained`.

        Called on a base class (``DiffusionLM.load_from_checkpoint``) with a checkpoint of a subclass written by the
        CLI, it builds that subclass when its module is already imported (Lightning's rule against loading
        arbitrary classes), instead of silently building the base class.
        """
        target = checkpoint_subclass(checkpoint_path, cls) if isinstance(checkpoint_path, (str, os.PathLike)) else None
        if target is not None and target is not cls:
            return target.load_from_checkpoint(
                checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict, weights_only=weights_only, **kwargs
            )
        return super().load_from_checkpoint(
            checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict, weights_only=weights_only, **kwargs
        )

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Size of the vocabulary the network was built for."""

    @abstractmethod
    def evaluation_loss(self, batch: Seq2SeqBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The training objective on an evaluation batch: scalar loss and named terms (batch means)."""

    @abstractmethod
    def generate(
        self,
        src_ids: Tensor,
        src_mask: Tensor,
        generator: torch.Generator | None = None,
        on_step: Callable[[int, int], None] | None = None,
        decoding: Decoding | None = None,
    ) -> Generation:
        """Decode ``B`` sources ``[B, S]`` into hypotheses with ``decoding`` (default: the model's own,
        ``self.decoding``); ``on_step(done, total)`` is called after each sampling step where decoding has steps.
        Prefer :func:`~lightning_diffusion.decoding.decode_batch`, which also seeds and handles empty sources."""

    @abstractmethod
    def check_decoding(self, decoding: Decoding) -> Decoding:
        """``decoding`` checked against this model (raises
        :class:`~lightning_diffusion.decoding.DecodingError` naming a setting that cannot apply) and completed
        with what the model fixes (e.g. the schedule's chain length)."""

    def decoding_settings(self, decoding: Decoding | None = None) -> str:
        """The decoding settings in words, printed next to every score (default: the model's own)."""
        return self.check_decoding(decoding if decoding is not None else self.decoding).describe()

    # ------------------------------------------------------------------ wiring
    def fit_output_vocabulary(self, vocabulary: OutputVocabulary | None) -> None:
        """Fit the head's output vocabulary (if any) on the training targets, keeping the end and padding ids, or
        check a resumed one against them (:func:`~lightning_diffusion.output_vocabulary.fit_output_vocabulary`)."""
        ids = self.special_ids
        line = fit_output_vocabulary(vocabulary, self.trainer, self.vocab_size, (ids.eos, ids.pad))
        if line is not None:
            rank_zero_info(line)

    # ------------------------------------------------------------------ wiring
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "tokenizer"):
            return
        self.attach_tokenizer(datamodule.tokenizer, datamodule.tokenizer_fingerprint)
        if callable(getattr(datamodule, "set_candidates_per_source", None)):
            # Evaluation batches are sized by tokens decoded: each source becomes this many candidates.
            datamodule.set_candidates_per_source(self.decoding.candidates)
        if stage == "fit":
            log_dir = self.trainer.log_dir  # a collective under DDP: every rank must ask
            if self.trainer.is_global_zero and log_dir:
                datamodule.save_tokenizer(f"{log_dir}/tokenizer")

    def attach_tokenizer(self, tokenizer: Any, fingerprint: str) -> None:
        """Give the module the tokenizer it decodes with (the data module's, or one loaded by hand)."""
        if len(tokenizer) != self.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but the denoiser was built for {self.vocab_size}"
            )
        self.tokenizer = tokenizer
        self.special_ids = special_ids(tokenizer)
        self.tokenizer_fingerprint = fingerprint
        self._check_tokenizer()

    def _check_tokenizer(self) -> None:
        stored, current = self.checkpoint_tokenizer_fingerprint, self.tokenizer_fingerprint
        if stored and current and stored != current:
            raise ValueError(
                "the checkpoint was trained with a different tokenizer (vocabulary fingerprint "
                f"{stored[:12]}..., the attached one is {current[:12]}...): point "
                "data.init_args.tokenizer at the run's saved tokenizer directory (<run dir>/tokenizer)"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"tokenizer_fingerprint": self.tokenizer_fingerprint, "train_seed": self.train_seed}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get(CHECKPOINT_KEY, {})
        self.checkpoint_tokenizer_fingerprint = stored.get("tokenizer_fingerprint")
        self._checkpoint_train_seed = stored.get("train_seed")
        self.checkpoint_step = checkpoint.get("global_step")
        self._check_tokenizer()

    def log_training_loss(self, loss: Tensor, terms: dict[str, Tensor], batch_size: int) -> None:
        """Stop on a non-finite training loss (naming the terms that are) and log ``train/loss`` (progress bar) and
        every ``train/<term>``."""
        if not torch.isfinite(loss):
            bad = [name for name, value in terms.items() if not torch.isfinite(value)]
            raise FloatingPointError(
                f"non-finite training loss at global step {self.global_step} (terms: {', '.join(bad) or 'total'}); "
                "lower the learning rate or enable gradient clipping (trainer.gradient_clip_val)"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=batch_size)

    # ------------------------------------------------------------------ multi-process helpers
    @property
    def world_size(self) -> int:
        """Number of training processes (1 without a trainer)."""
        return self._trainer.world_size if self._trainer is not None else 1

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum of ``tensor`` over ranks (the tensor itself in a single process)."""
        if self.world_size <= 1:
            return tensor
        return self.trainer.strategy.reduce(tensor, reduce_op="sum")

    def gather_ragged(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """Every rank's ``[B_r, ...]`` tensors concatenated in rank order (``B_r`` may differ between ranks,
        as token-budget batches do); the tensors themselves in a single process."""
        if self.world_size <= 1:
            return tensors
        sizes = self.all_gather(torch.tensor([tensors[0].shape[0]], device=self.device)).reshape(-1).tolist()
        longest = max(sizes)
        gathered = []
        for tensor in tensors:
            padding = tensor.new_zeros(longest - tensor.shape[0], *tensor.shape[1:])
            parts = self.all_gather(torch.cat([tensor, padding]))  # [W, longest, ...]
            gathered.append(torch.cat([parts[rank, :size] for rank, size in enumerate(sizes)]))
        return tuple(gathered)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def decode_ids(self, token_ids: Tensor, collapse: bool = False) -> list[str]:
        """Token ids ``[B, L]`` -> strings: cut at the first end token (``special_ids.eos``: the EOS, or the SEP
        of a tokenizer without EOS), drop special tokens, collapse runs of one token when ``collapse``, detokenize."""
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer attached: call attach_tokenizer() or run through a Trainer with the data module")
        end = self.special_ids.eos
        texts = []
        for row in token_ids.tolist():
            if end in row:
                row = row[: row.index(end)]
            if collapse:
                row = collapse_repeats(row)
            texts.append(decode_tokens(self.tokenizer, row).strip())
        return texts

    def _sampling_step_hook(self) -> Callable[[int, int], None] | None:
        """``on_step(done, total)`` that calls ``on_sampling_step(trainer, module, done, total)`` on the trainer's
        callbacks that define it (e.g. :class:`~lightning_diffusion.callbacks.SamplingProgress`); None without
        such a callback or when the model's decoding has no sampling steps (autoregressive search)."""
        trainer = self._trainer
        if trainer is None or not self.decoding.reports_steps:
            return None
        listeners = [cb for cb in trainer.callbacks if callable(getattr(cb, "on_sampling_step", None))]
        if not listeners:
            return None

        def on_step(done: int, total: int) -> None:
            for callback in listeners:
                callback.on_sampling_step(trainer, self, done, total)

        return on_step

    def _decode_batch(self, batch: Seq2SeqBatch) -> list[dict[str, Any]]:
        """Decode a batch with the model's decoding into rows ``{"index", "source", "hypothesis"[, "reference"]}``
        (see :func:`~lightning_diffusion.decoding.decode_batch`: seeded by ``decode_seed`` and the batch's first
        index; empty sources get an empty hypothesis)."""
        return decode_batch(self, batch, self.decoding, self.decode_seed, self._sampling_step_hook()).rows

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Seq2SeqBatch, stage: str) -> None:
        loss, terms = self.evaluation_loss(batch)
        n = len(batch)
        self.log(f"{stage}/loss", loss, batch_size=n, sync_dist=True)
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value, batch_size=n, sync_dist=True)
        if stage == "test" or self.decode_during_validation:
            self._outputs.extend(self._decode_batch(batch))

    def validation_step(self, batch: Seq2SeqBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Seq2SeqBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:
        self._score("val")

    def on_test_epoch_end(self) -> None:
        self._score("test")

    def _gather_rows(self) -> list[dict[str, Any]]:
        rows = self._outputs
        if self.trainer.world_size > 1:
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        unique = {row["index"]: row for row in rows}
        return [unique[i] for i in sorted(unique)]

    def _score(self, stage: str) -> None:
        if stage == "val" and not self.decode_during_validation:
            return
        rows = self._gather_rows()
        self._outputs = []
        if not rows:
            return
        sanity = self.trainer.sanity_checking
        fitting = self.trainer.state.fn == "fit"
        step = self.global_step if fitting or self.checkpoint_step is None else self.checkpoint_step
        report = evaluate(rows, self.decoding_settings(), stage, 0 if sanity else step, self.log_samples)
        if not sanity:
            self.log(f"{stage}/bleu", report.bleu, batch_size=len(rows), sync_dist=True)  # same value on every rank
            for key in ("rouge1", "rouge2", "rougeL"):
                self.log(f"{stage}/{key}", getattr(report, key), batch_size=len(rows), sync_dist=True)
        self.last_report = report
        when = "before training (sanity check)" if sanity else f"step {step}"
        rank_zero_info(report.format(when))

    # ------------------------------------------------------------------ prediction
    def predict_step(self, batch: Seq2SeqBatch, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        return self._decode_batch(batch)

