"""The discrete-diffusion LightningModule: corrupt target tokens, predict them back, decode by re-masking.

Every part is injected (and so named by ``class_path`` in a recipe): the token denoiser (a factory called with the
vocabulary size), the corruption process, the masking schedule, the loss terms, the sampler, the length
predictor and the candidate selection. Validation, test, predict, ``generate`` and the benchmarks decode through
the one decoding path (:func:`~lightning_diffusion.decoding.decode_batch`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_diffusion.arguments import check_at_least, check_positive_finite
from lightning_diffusion.candidates import (
    build_length_predictor,
    candidate_layout,
    canvas_length,
    choose_candidates,
    length_groups,
    sample_in_groups,
)
from lightning_diffusion.decoding import Decoding, DecodingError
from lightning_diffusion.discrete.categorical import sample_categorical
from lightning_diffusion.discrete.corruption.absorbing import AbsorbingCorruption
from lightning_diffusion.discrete.corruption.base import Corruption
from lightning_diffusion.discrete.denoisers.base import TokenDenoiser
from lightning_diffusion.discrete.glancing import Glancing
from lightning_diffusion.discrete.losses.base import DiscreteLossInputs, DiscreteLossTerm
from lightning_diffusion.discrete.losses.masked_elbo import MaskedDiffusionELBO
from lightning_diffusion.discrete.samplers.base import DiscreteSampler
from lightning_diffusion.discrete.samplers.remasking import MaskPredictSampler
from lightning_diffusion.discrete.schedules.base import MaskingSchedule
from lightning_diffusion.discrete.schedules.linear import LinearMasking
from lightning_diffusion.guidance.base import Guidance, check_guidance
from lightning_diffusion.guidance.condition_dropout import drop_condition, null_condition_parameter
from lightning_diffusion.length import LengthPredictor
from lightning_diffusion.losses import LengthNLL, LossTerm
from lightning_diffusion.output_vocabulary import (
    OutputVocabulary,
    warn_outside_vocabulary,
)
from lightning_diffusion.selection import CandidateSelection, MBRSelection
from lightning_diffusion.seq2seq import Generation, Seq2SeqModule
from lightning_diffusion.types import Conditioning, Seq2SeqBatch, masked_mean

_INJECTED = [
    "denoiser", "corruption", "schedule", "loss_terms", "sampler", "length_predictor", "selection", "optimizer",
    "lr_scheduler", "guidance", "glancing", "output_vocabulary",
]  # fmt: skip


def stratified_times(batch_size: int, epsilon: float, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """``[B]`` times in ``[epsilon, 1]``, one per stratum ``[(i + u) / B]`` with a shared offset ``u`` (MDLM's
    low-discrepancy sampler: the batch covers ``t`` evenly, which lowers the variance of the ``1 / t``-weighted
    loss)."""
    u = torch.rand((), device=device, generator=generator)
    t = (torch.arange(batch_size, device=device) + u) / batch_size
    return epsilon + (1.0 - epsilon) * t[torch.randperm(batch_size, device=device, generator=generator)]


class DiscreteDiffusionLM(Seq2SeqModule):
    """Sequence-to-sequence discrete (token) diffusion: absorbing, uniform or mask-and-replace corruption.

    Training: draw ``t`` per example (stratified over the batch), corrupt the target with
    ``q(x_t | x0)`` (:class:`Corruption` under the :class:`MaskingSchedule`), predict ``x0`` logits with the
    denoiser and sum the weighted loss terms. Decoding: the sampler walks from the prior (all ``[MASK]`` for
    absorbing) to tokens; with a length predictor each source gets the ``length_beam`` most likely lengths x
    ``noise_beam`` samples and the selection (MBR) picks one.

    Args:
        denoiser: factory called with ``vocab_size`` that builds the :class:`TokenDenoiser`.
        corruption: the forward process; default absorbing.
        schedule: ``alpha(t)``; default linear. A schedule with statistics (spindle) is fitted on the training
            targets before training starts.
        loss_terms: default ``[MaskedDiffusionELBO]`` (absorbing only); add
            :class:`~lightning_diffusion.losses.LengthNLL` with a length predictor.
        sampler: decoding rule; default ``MaskPredictSampler(steps=10)``.
        length_predictor: factory called with the denoiser's ``hidden_dim``; without one every target is a canvas
            of ``min(max_length, ceil(length_ratio * longest source) + length_offset)`` positions whose tail is
            padding the model learns to produce.
        length_beam, noise_beam, selection: candidates per source and how one is picked (never with the reference).
        time_epsilon: smallest training time (the ELBO weight ``1 / t`` is clipped there).
        unroll_steps: SUNDAE's unrolled denoising (Savinov et al. 2022): with 2, the corrupted positions are
            filled with the model's own (detached) samples and denoised again, and the cross-entropy of that second
            pass against the target is added as the ``unrolled`` term. 1 = off.
        unroll_weight: weight of the ``unrolled`` term.
        length_ratio, length_offset, max_length: canvas rule and the cap on predicted lengths.
        optimizer, lr_scheduler, log_samples, decode_seed, decode_during_validation: as in :class:`Seq2SeqModule`.
        condition_dropout: classifier-free guidance training (Ho & Salimans 2022): each training example's source
            conditioning is replaced by a learned null condition (``null_condition`` ``[H]``, created only when
            > 0) with this probability. Needed by ``ClassifierFreeGuidance`` at decoding.
        guidance: the default decoding's :class:`~lightning_diffusion.guidance.Guidance` (None = unguided).
        glancing: GLAT's glancing sampling (:class:`~lightning_diffusion.discrete.glancing.Glancing`) in place of the
            random corruption level for (a share of) the training examples; None = off. Costs one extra forward
            pass without gradient per training step.
        output_vocabulary: score only the training targets' ids in the denoiser's output head
            (:class:`~lightning_diffusion.output_vocabulary.OutputVocabulary`, fitted before training with the
            schedule's statistics); None = the whole vocabulary. Losses and the re-masking samplers then compute the
            head over those ids alone (label smoothing spreads over them). Absorbing corruption only.
    """

    def __init__(
        self,
        denoiser: Callable[[int], TokenDenoiser],
        corruption: Corruption | None = None,
        schedule: MaskingSchedule | None = None,
        loss_terms: list[LossTerm] | None = None,
        sampler: DiscreteSampler | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        vocab_size: int = 0,
        length_predictor: Callable[[int], LengthPredictor] | None = None,
        length_beam: int = 1,
        noise_beam: int = 1,
        selection: CandidateSelection | None = None,
        time_epsilon: float = 1e-3,
        unroll_steps: int = 1,
        unroll_weight: float = 1.0,
        length_ratio: float = 1.5,
        length_offset: int = 4,
        max_length: int = 128,
        log_samples: int = 3,
        decode_seed: int = 0,
        decode_during_validation: bool = True,
        condition_dropout: float = 0.0,
        guidance: Guidance | None = None,
        glancing: Glancing | None = None,
        output_vocabulary: OutputVocabulary | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, log_samples, decode_seed, decode_during_validation)
        self.save_init_arguments(injected=_INJECTED, vocab_size=vocab_size)
        check_at_least("DiscreteDiffusionLM", 1, max_length=max_length, unroll_steps=unroll_steps)
        check_positive_finite("DiscreteDiffusionLM", length_ratio=length_ratio)
        if not 0.0 < time_epsilon < 1.0:
            raise ValueError(f"DiscreteDiffusionLM: time_epsilon must be in (0, 1), got {time_epsilon}")
        self.denoiser = denoiser(vocab_size)
        if output_vocabulary is not None:
            self.denoiser.restrict_output(output_vocabulary)
        self.corruption = corruption if corruption is not None else AbsorbingCorruption()
        if output_vocabulary is not None and not self.corruption.absorbing:
            raise ValueError(
                f"output_vocabulary needs absorbing corruption (got {self.corruption.describe()}): a corruption that "
                "replaces tokens puts ids into x_t whose posterior the head must score over the whole vocabulary"
            )
        self.schedule = schedule if schedule is not None else LinearMasking()
        self.loss_terms = nn.ModuleList(loss_terms if loss_terms is not None else [MaskedDiffusionELBO()])
        self._check_loss_terms()
        self.length_predictor = build_length_predictor(length_predictor, self.denoiser.hidden_dim, self.loss_terms)
        self.condition_dropout = condition_dropout
        self.null_condition = null_condition_parameter(condition_dropout, self.denoiser.hidden_dim)
        self.decoding = self.check_decoding(
            Decoding(
                sampler=sampler if sampler is not None else MaskPredictSampler(steps=10),
                length_beam=length_beam,
                noise_beam=noise_beam,
                selection=selection if selection is not None else MBRSelection(),
                guidance=guidance,
            )
        )
        self.glancing = glancing
        self.time_epsilon = time_epsilon
        self.unroll_steps = unroll_steps
        self.unroll_weight = unroll_weight
        self.length_ratio = length_ratio
        self.length_offset = length_offset
        self.max_length = max_length

    def _check_loss_terms(self) -> None:
        names = [term.name for term in self.loss_terms]
        if len(set(names)) != len(names) or not names or "unrolled" in names:
            raise ValueError(f"loss terms need distinct names (not 'unrolled') and at least one term, got {names}")
        for term in self.loss_terms:
            if not isinstance(term, (DiscreteLossTerm, LengthNLL)):
                raise ValueError(
                    f"loss term {type(term).__name__} belongs to the continuous family; DiscreteDiffusionLM takes "
                    "lightning_diffusion.discrete.losses terms (MaskedDiffusionELBO, ReweightedCrossEntropy, D3PMHybrid) "
                    "and LengthNLL"
                )
            if isinstance(term, DiscreteLossTerm) and term.needs_full_vocabulary and self.denoiser.output_vocabulary is not None:
                raise ValueError(
                    f"loss term {type(term).__name__} scores the posterior over the whole vocabulary; it cannot be used "
                    "with an output_vocabulary (drop one of the two)"
                )
            if isinstance(term, DiscreteLossTerm) and term.needs_mask_state and not self.corruption.absorbing:
                raise ValueError(
                    f"loss term {type(term).__name__} is the absorbing-state ELBO; with {self.corruption.describe()} use "
                    "ReweightedCrossEntropy or D3PMHybrid"
                )

    @property
    def vocab_size(self) -> int:
        return self.denoiser.vocab_size

    @property
    def sampler(self) -> DiscreteSampler:
        """The default decoding's sampler (read-only: pass another ``Decoding`` to change it)."""
        assert isinstance(self.decoding.sampler, DiscreteSampler)
        return self.decoding.sampler

    @property
    def length_beam(self) -> int:
        return self.decoding.length_beam

    @property
    def noise_beam(self) -> int:
        return self.decoding.noise_beam

    def check_decoding(self, decoding: Decoding) -> Decoding:
        sampler = decoding.sampler
        if not isinstance(sampler, DiscreteSampler):
            got = sampler.describe() if sampler is not None else (decoding.search.describe() if decoding.search else "none")
            raise DecodingError(
                f"decoding: {type(self).__name__} decodes tokens with a discrete sampler (MaskPredictSampler, "
                f"DiscreteAncestralSampler, ConfidenceThresholdSampler, TauLeapingSampler), got {got}"
            )
        if sampler.needs_absorbing and not self.corruption.absorbing:
            raise DecodingError(f"decoding: {type(sampler).__name__} needs absorbing corruption; this model uses {self.corruption.describe()}")
        if decoding.selection.needs_scores and not sampler.scores_tokens and decoding.candidates > 1:
            raise DecodingError(
                f"decoding: selection {type(decoding.selection).__name__} ranks candidates by the sampler's token "
                f"scores; {type(sampler).__name__} gives none (use MaskPredictSampler or ConfidenceThresholdSampler, "
                "or MBRSelection)"
            )
        if decoding.length_beam > 1 and self.length_predictor is None:
            raise DecodingError(
                f"decoding: length_beam {decoding.length_beam} needs a model with a length predictor; this model "
                "decodes one padded canvas per source: use noise_beam for more candidates"
            )
        if decoding.repeat_penalty > 0:
            raise DecodingError(
                f"decoding: repeat_penalty applies to the rounding of continuous diffusion models; {type(self).__name__} "
                "decodes tokens (collapse_repeats is the post-process against repeated words here)"
            )
        check_guidance(decoding.guidance, type(self).__name__, self.null_condition, tokens=True)
        return decoding

    def decoding_settings(self, decoding: Decoding | None = None) -> str:
        described = super().decoding_settings(decoding)
        return f"{described}, {self.corruption.describe()} corruption, {self.schedule.describe()}"

    # ------------------------------------------------------------------ statistics
    def on_fit_start(self) -> None:
        """Fit the schedule's statistics and the output vocabulary on the training targets, unless a checkpoint
        brought them (this hook runs after Lightning restored a resumed run's checkpoint; ``setup`` runs before)."""
        super().on_fit_start()
        self.fit_output_vocabulary(self.denoiser.output_vocabulary)
        if not self.schedule.needs_statistics or self.schedule.fitted:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not callable(getattr(datamodule, "target_token_counts", None)):
            raise ValueError(f"{self.schedule.describe()} needs the training targets' token counts: use a data module with target_token_counts()")
        counts = datamodule.target_token_counts(self.vocab_size)
        self.schedule.fit(counts.to(self.device))
        rank_zero_info(f"{self.schedule.describe()}: token information fitted on {int(counts.sum())} training target tokens")

    # ------------------------------------------------------------------ training
    def canvas_length(self, src_mask: Tensor) -> int:
        """Decoding canvas for a batch: ``min(max_length, ceil(ratio * longest source) + offset)``."""
        return canvas_length(src_mask, self.length_ratio, self.length_offset, self.max_length)

    def training_targets(self, batch: Seq2SeqBatch) -> tuple[Tensor, Tensor, Tensor | None]:
        """What the denoiser is trained to reproduce for a batch with targets.

        Returns:
            ``target`` ``[B, L]`` (a canvas model: the target, its EOS and padding up to the canvas length; a
            length-predictor model: the collated target), ``real`` ``[B, L]`` bool at target tokens and EOS, and the
            denoiser's ``attention_mask`` ``[B, L]`` (None on a canvas).
        """
        assert batch.tgt_ids is not None and batch.tgt_mask is not None
        if self.length_predictor is not None:
            return batch.tgt_ids, batch.tgt_mask, batch.tgt_mask
        extra = max(batch.tgt_ids.shape[1], self.canvas_length(batch.src_mask)) - batch.tgt_ids.shape[1]
        target = F.pad(batch.tgt_ids, (0, extra), value=self.special_ids.pad)
        return target, F.pad(batch.tgt_mask, (0, extra), value=False), None

    def evaluation_loss(self, batch: Seq2SeqBatch) -> tuple[Tensor, dict[str, Tensor]]:
        loss, terms = self.compute_losses(batch)
        return loss, terms

    def compute_losses(self, batch: Seq2SeqBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The training objective on one batch: the scalar loss and each term's batch mean."""
        if batch.tgt_ids is None or batch.tgt_mask is None:
            raise ValueError("training and validation batches need targets")
        cond = self.denoiser.encode(batch.src_ids, batch.src_mask)
        length_logits = length_targets = None
        target, real, attention_mask = self.training_targets(batch)
        # A canvas model also learns the padding it must produce; a length-predictor model only the real target.
        loss_mask = torch.ones_like(real) if attention_mask is None else real
        if not self.training and self.denoiser.output_vocabulary is not None:
            warn_outside_vocabulary(self.denoiser.kept_columns(target)[loss_mask.bool()])
        if self.length_predictor is not None:
            length_logits = self.length_predictor(cond)
            length_targets = self.length_predictor.targets(batch.src_mask.sum(-1), batch.tgt_mask.sum(-1))
        if self.training:  # after the length predictor, which always reads the real source
            cond = drop_condition(cond, self.null_condition, self.condition_dropout)
        b = target.shape[0]
        t = stratified_times(b, self.time_epsilon, self.device)
        alpha_t = self.schedule.alpha(t, target).expand_as(target)
        x_t = self.corruption.sample(target, alpha_t, self.vocab_size)
        if attention_mask is not None:
            x_t = torch.where(attention_mask, x_t, target)  # positions past the length are never seen
        if self.training and self.glancing is not None:
            x_t, t = self._glance(target, x_t, t, cond, attention_mask, loss_mask)
            alpha_t = self.schedule.alpha(t, target).expand_as(target)
        inputs = DiscreteLossInputs(
            x0=target,
            x_t=x_t,
            hidden=self.denoiser.hidden_states(x_t, t, cond, attention_mask),
            head=self.denoiser.kept_logits,
            columns=self.denoiser.kept_columns,
            mask=loss_mask,
            t=t,
            alpha_t=alpha_t,
            rate_t=self.schedule.rate(t, target).expand_as(target),
            alpha_at=lambda s: self.schedule.alpha(s, target).expand_as(target),
            corruption=self.corruption,
            mask_id=self.denoiser.mask_id,
            length_logits=length_logits,
            length_targets=length_targets,
        )
        per_term = {term.name: term(inputs) for term in self.loss_terms}
        per_example = sum(term.weight * per_term[term.name] for term in self.loss_terms)
        if self.unroll_steps > 1:
            per_term["unrolled"] = self._unrolled(inputs, cond, attention_mask)
            per_example = per_example + self.unroll_weight * per_term["unrolled"]
        loss = per_example.mean()
        return loss, {name: value.mean() for name, value in per_term.items()}

    def _glance(
        self, target: Tensor, x_t: Tensor, t: Tensor, cond: Conditioning, attention_mask: Tensor | None, loss_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """GLAT's glancing state for the chosen examples: predict the target from the prior (no gradient), reveal
        ``ceil(ratio * wrong)`` random true tokens, corrupt the rest; their time is the schedule time of the
        corrupted share. Returns ``x_t`` ``[B, L]`` and ``t`` ``[B]`` (the other examples unchanged)."""
        assert self.glancing is not None
        b = target.shape[0]
        prior = self.corruption.prior(tuple(target.shape), self.vocab_size, target.device)
        if attention_mask is not None:
            prior = torch.where(attention_mask, prior, target)
        scored = loss_mask.bool()
        with torch.no_grad():  # the head at the scored positions only (a length model's padding needs no pick)
            hidden = self.denoiser.hidden_states(prior, torch.ones(b, device=target.device), cond, attention_mask)
            # float(): under CPU bf16 autocast, argmax over bf16 logits took 12 ms a call against ~3 ms in float32
            picks = target.masked_scatter(scored, self.denoiser.kept_ids(self.denoiser.kept_logits(hidden[scored]).float().argmax(-1)))
        keep = self.glancing.revealed(picks, target, scored, self.global_step)
        clean_share = keep.sum(-1).float() / scored.sum(-1).clamp_min(1).float()
        glanced_t = self.schedule.time_at(clean_share).clamp(self.time_epsilon, 1.0)
        rows = self.glancing.chosen(b, target.device)
        x_t = torch.where(rows[:, None], torch.where(keep, target, prior), x_t)
        return x_t, torch.where(rows, glanced_t, t)

    def _unrolled(self, inputs: DiscreteLossInputs, cond: Conditioning, attention_mask: Tensor | None) -> Tensor:
        """SUNDAE's unrolled term: fill the corrupted positions with the model's own samples (no gradient through
        the draw), denoise again ``unroll_steps - 1`` times, cross-entropy of the last pass over the loss positions.
        Per example ``[B]``."""
        corrupted = inputs.corrupted
        rows = inputs.corrupted_logits  # [N, V'] over the head's columns
        for _ in range(self.unroll_steps - 1):
            with torch.no_grad():
                draws = self.denoiser.kept_ids(sample_categorical(F.softmax(rows.detach().float(), dim=-1)))
            x = inputs.x_t.masked_scatter(corrupted, draws)
            logits = self.denoiser.kept_logits(self.denoiser.hidden_states(x, inputs.t, cond, attention_mask))  # [B, L, V']
            rows = logits[corrupted]
        # Targets as columns: one the head cannot emit (evaluation only) is ignored (-100).
        nll = F.cross_entropy(logits.float().transpose(1, 2), inputs.x0_columns, reduction="none")
        return masked_mean(nll, inputs.mask)

    def training_step(self, batch: Seq2SeqBatch, batch_idx: int) -> Tensor:
        loss, terms = self.compute_losses(batch)
        self.log_training_loss(loss, terms, len(batch))
        return loss

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def generate(
        self,
        src_ids: Tensor,
        src_mask: Tensor,
        generator: torch.Generator | None = None,
        on_step: Callable[[int, int], None] | None = None,
        decoding: Decoding | None = None,
    ) -> Generation:
        """Decode ``B`` sources ``[B, S]`` with ``decoding`` (default: ``self.decoding``): the source is encoded once;
        ``length_beam`` lengths x ``noise_beam`` samples per source are decoded in parallel (with predicted lengths:
        in groups of similar length, :func:`~lightning_diffusion.candidates.sample_in_groups`) and the selection
        picks one. Positions past a candidate's length hold the end token, so the hypothesis is cut there."""
        decoding = self.check_decoding(decoding if decoding is not None else self.decoding)
        sampler = decoding.sampler
        assert isinstance(sampler, DiscreteSampler)
        cond = self.denoiser.encode(src_ids, src_mask)
        layout = candidate_layout(self.length_predictor, cond, src_mask, decoding, self.max_length, self.canvas_length(src_mask))
        guidance = decoding.guidance
        denoiser = self.denoiser if guidance is None else guidance.guide_tokens(self.denoiser, self.null_condition)
        cond = cond.repeat_interleave(layout.per_source)
        if layout.tgt_mask is None:
            out = sampler.sample(denoiser, self.schedule, self.corruption, cond, layout.length, None, generator, on_step)
            token_ids, nfe, scores = out.token_ids, out.nfe, out.scores
        else:
            token_ids, nfe, scores = self._sample_by_length(sampler, denoiser, cond, layout.tgt_mask, generator, on_step)
        texts = choose_candidates(self, token_ids, layout, decoding, scores)
        return Generation(texts=texts, nfe=nfe * decoding.calls_per_step, candidates=layout.per_source)

    def _sample_by_length(
        self,
        sampler: DiscreteSampler,
        denoiser: TokenDenoiser,
        cond: Conditioning,
        tgt_mask: Tensor,
        generator: torch.Generator | None,
        on_step: Callable[[int, int], None] | None,
    ) -> tuple[Tensor, int, Tensor | None]:
        """Decode candidates with predicted lengths (``tgt_mask`` ``[N, L]``) in groups of similar length
        (:func:`~lightning_diffusion.candidates.length_groups`), each on a canvas as long as its longest row, so a
        short candidate does not carry the batch's longest canvas through every step (every row is decoded on its
        own positions either way). Returns the ids ``[N, L]`` (0 past each length), the most calls a group made and
        the candidates' scores ``[N]`` (None when the sampler gives none)."""

        def sample_group(rows: Tensor, length: int, step: Callable[[int, int], None] | None) -> tuple[Tensor, int, Tensor | None]:
            out = sampler.sample(
                denoiser, self.schedule, self.corruption, cond.select(rows), length, tgt_mask[rows, :length], generator, step
            )  # fmt: skip
            return out.token_ids, out.nfe, out.scores

        groups = length_groups(tgt_mask.sum(-1))
        return sample_in_groups(tgt_mask, groups, sample_group, on_step, with_scores=sampler.scores_tokens)


__all__ = ["DiscreteDiffusionLM", "stratified_times"]
