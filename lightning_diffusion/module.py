"""The LightningModule: the one place with training, validation, test and predict steps.

Every swappable part is injected through the constructor (and so by ``class_path`` in a recipe): the
denoiser (as a factory called with the vocabulary size), the noise schedule, the loss terms, the sampler,
the timestep sampler, the optimizer and the LR scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
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
from lightning_diffusion.denoisers.base import Denoiser
from lightning_diffusion.guidance.base import Guidance, check_guidance
from lightning_diffusion.guidance.condition_dropout import dropped_rows, null_condition_parameter
from lightning_diffusion.length import LengthPredictor
from lightning_diffusion.losses import X0MSE, LossTerm, PriorLoss, RoundingNLL
from lightning_diffusion.output_vocabulary import OutputVocabulary, warn_outside_vocabulary
from lightning_diffusion.preconditioning import SkipPreconditioning
from lightning_diffusion.samplers.base import Sampler
from lightning_diffusion.samplers.ddim import DDIMSampler
from lightning_diffusion.samplers.no_repeat_rounding import round_without_repeats
from lightning_diffusion.schedules.base import NoiseSchedule
from lightning_diffusion.selection import CandidateSelection, MBRSelection
from lightning_diffusion.seq2seq import Generation, Seq2SeqModule
from lightning_diffusion.timesteps import TimestepSampler, UniformTimestepSampler
from lightning_diffusion.types import LossInputs, SampleOutput, Seq2SeqBatch
from lightning_diffusion.unrolled_denoising import UnrolledDenoising

log = logging.getLogger("lightning_diffusion")

_INJECTED = [
    "denoiser", "schedule", "loss_terms", "sampler", "timestep_sampler", "length_predictor", "selection",
    "preconditioning", "optimizer", "lr_scheduler", "guidance", "unrolled_denoising", "output_vocabulary",
]  # fmt: skip


def _check_source_terms(
    loss_terms: nn.ModuleList, denoiser: Denoiser, preconditioning: SkipPreconditioning | None
) -> None:
    """Loss terms that read the denoiser's source output (``SourceMSE``) need a denoiser that has one and no forward
    hook on it (skip preconditioning mixes the target output only). (Rows whose source classifier-free training
    replaced by the null condition are left out of the source mask.)"""
    names = [term.name for term in loss_terms if term.needs_source_output]
    if not names:
        return
    if not denoiser.returns_source_output:
        raise ValueError(
            f"loss terms {names} read the denoiser's output at the source positions, which {type(denoiser).__name__} "
            "does not have (the source does not run through its network); use DiffuSeqDenoiser or drop the terms"
        )
    if preconditioning is not None:
        raise ValueError(f"loss terms {names} cannot run with preconditioning (it mixes the target output only)")


class DiffusionLM(Seq2SeqModule):
    """Sequence-to-sequence diffusion in embedding space (Diffusion-LM / DiffuSeq / Difformer family).

    Args:
        denoiser: factory called with ``vocab_size`` that builds the :class:`Denoiser` (in a recipe: the
            denoiser's ``class_path`` and ``init_args`` without ``vocab_size``).
        schedule: the :class:`NoiseSchedule` (e.g. ``SqrtSchedule(num_steps=2000)``).
        loss_terms: weighted loss terms; default ``[X0MSE, RoundingNLL, PriorLoss]`` (DiffuSeq's objective).
        sampler: decoding rule and steps; default ``DDIMSampler(steps=20)``.
            ``sampler``, ``length_beam``, ``noise_beam`` and ``selection`` make the model's default
            :class:`~lightning_diffusion.decoding.Decoding` (``self.decoding``); pass another to ``generate``.
        timestep_sampler: factory called with ``T`` (uniform or loss-aware).
        optimizer: factory called with the parameters (LightningCLI's ``OptimizerCallable``).
        lr_scheduler: optional factory called with the optimizer; stepped every optimizer step.
        vocab_size: filled in from the data module's tokenizer.
        train_noise_factor: Difformer's noise factor ``F`` in training (the sampler has its own).
        self_condition_prob: probability of the self-conditioning pass in training (needs a denoiser built
            with ``self_conditioning: true``).
        self_condition_per_batch: draw the self-conditioning coin once per batch (Chen et al. 2023, "Analog Bits",
            Algorithm 1): with probability ``self_condition_prob`` the whole batch (each process's own batch under
            DDP) gets the first pass, else it is skipped, so a step costs ``1 + p`` forward passes instead of 2.
            Default False: one coin per example (the first pass always runs; its output feeds the chosen rows).
        length_predictor: factory called with the denoiser's ``hidden_dim`` (Difformer). With one, targets
            are exactly as long as the sentence (+ EOS), positions beyond are masked out of attention and the
            loss, and decoding tries the ``length_beam`` most likely lengths. Without one (DiffuSeq), every
            target is a canvas whose tail is padding that the model learns to produce.
        length_beam: lengths tried per source (needs ``length_predictor``).
        noise_beam: noise samples decoded per length; ``selection`` picks one of ``length_beam * noise_beam``
            per source.
        selection: the candidate selection rule; default MBR (sentence-BLEU consensus among the candidates,
            never against the reference).
        preconditioning: optional :class:`~lightning_diffusion.preconditioning.SkipPreconditioning`: the x0
            estimate mixes the noisy input with the network's output (EDM's c_skip / c_out), for training and
            sampling alike (installed as a forward hook on the denoiser). Default None: the network's output is x0.
        length_ratio, length_offset, max_length: without a length predictor the decoding canvas for a batch is
            ``min(max_length, ceil(length_ratio * longest source) + length_offset)`` positions, and training
            canvases are at least this long; ``max_length`` also caps predicted lengths.
        log_samples: decoded validation samples printed after each validation.
        decode_seed: seed of the decoding noise, so validation scores are reproducible.
        decode_during_validation: decode and score BLEU/ROUGE in validation (else only the loss).
        condition_dropout: classifier-free guidance training (Ho & Salimans 2022): each training example's source
            conditioning is replaced by a learned null condition (``null_condition`` ``[H]``, created only when
            > 0) with this probability. Needed by ``ClassifierFreeGuidance`` at decoding.
        guidance: the default decoding's :class:`~lightning_diffusion.guidance.Guidance` (None = unguided), like
            ``sampler``; pass another ``Decoding`` to change it per call.
        noisy_x_start: train on ``x_start = Emb(y) + sqrt(1 - abar_1) eps`` instead of ``Emb(y)`` (the official
            DiffuSeq's ``_get_x_start``; std 0.12 for the sqrt schedule with T = 2000): the latent that is noised
            and that the MSE, rounding and prior terms score (the official code keeps the clean embedding as the
            MSE target at its first step, 1 in T of the examples; here every step scores ``x_start``).
        unrolled_denoising: optional :class:`~lightning_diffusion.unrolled_denoising.UnrolledDenoising`: a share of
            the training batches gets, instead of ``z_t`` from the truth, the input the DDIM sampler gives the
            network after one step from the network's own estimate (SUNDAE-style training on its own outputs).
            Default None.
        output_vocabulary: round to the training targets' ids only
            (:class:`~lightning_diffusion.output_vocabulary.OutputVocabulary`, fitted before training with the
            end and padding ids): the rounding and anchor heads, the final rounding and clamping score ``V'`` of the
            ``V`` ids (the word embedding keeps every row for the source). A denoiser with a token head of its own
            (CDCD's :class:`~lightning_diffusion.denoisers.ScoreInterpolationDenoiser`) still scores every id there.
            Default None: every id.
        repeat_penalty: the default decoding's rounding: 0 = each position's argmax; > 0 = the best token sequence
            under a penalty of this many nats per back-to-back repeat of a word
            (:mod:`~lightning_diffusion.samplers.no_repeat_rounding`), like ``sampler`` a per-call setting of
            :class:`~lightning_diffusion.decoding.Decoding`.
    """

    def __init__(
        self,
        denoiser: Callable[[int], Denoiser],
        schedule: NoiseSchedule,
        loss_terms: list[LossTerm] | None = None,
        sampler: Sampler | None = None,
        timestep_sampler: Callable[[int], TimestepSampler] = UniformTimestepSampler,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        vocab_size: int = 0,
        train_noise_factor: float = 1.0,
        self_condition_prob: float = 0.0,
        self_condition_per_batch: bool = False,
        length_predictor: Callable[[int], LengthPredictor] | None = None,
        length_beam: int = 1,
        noise_beam: int = 1,
        length_ratio: float = 1.5,
        length_offset: int = 4,
        max_length: int = 128,
        selection: CandidateSelection | None = None,
        preconditioning: SkipPreconditioning | None = None,
        log_samples: int = 3,
        decode_seed: int = 0,
        decode_during_validation: bool = True,
        condition_dropout: float = 0.0,
        guidance: Guidance | None = None,
        noisy_x_start: bool = False,
        unrolled_denoising: UnrolledDenoising | None = None,
        output_vocabulary: OutputVocabulary | None = None,
        repeat_penalty: float = 0.0,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, log_samples, decode_seed, decode_during_validation)
        self.save_init_arguments(injected=_INJECTED, vocab_size=vocab_size)
        if not 0.0 <= self_condition_prob <= 1.0:
            raise ValueError(f"self_condition_prob must be in [0, 1], got {self_condition_prob}")
        check_at_least("DiffusionLM", 1, max_length=max_length)
        check_positive_finite("DiffusionLM", train_noise_factor=train_noise_factor, length_ratio=length_ratio)
        self.denoiser = denoiser(vocab_size)
        if output_vocabulary is not None:
            self.denoiser.restrict_output(output_vocabulary)
        self.preconditioning = preconditioning
        if preconditioning is not None:
            preconditioning.bind(schedule, train_noise_factor)
            self.denoiser.register_forward_hook(preconditioning.hook, with_kwargs=True)
        if self_condition_prob > 0 and not self.denoiser.self_conditioning:
            raise ValueError("self_condition_prob > 0 needs a denoiser built with self_conditioning: true")
        self.schedule = schedule
        self.loss_terms = nn.ModuleList(loss_terms if loss_terms is not None else [X0MSE(), RoundingNLL(), PriorLoss()])
        names = [term.name for term in self.loss_terms]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"loss terms need distinct names and at least one term, got {names}")
        self.length_predictor = build_length_predictor(length_predictor, self.denoiser.hidden_dim, self.loss_terms)
        self.condition_dropout = condition_dropout
        self.null_condition = null_condition_parameter(condition_dropout, self.denoiser.hidden_dim)
        _check_source_terms(self.loss_terms, self.denoiser, preconditioning)
        self.decoding = self.check_decoding(
            Decoding(
                sampler=sampler if sampler is not None else DDIMSampler(steps=20),
                length_beam=length_beam,
                noise_beam=noise_beam,
                selection=selection if selection is not None else MBRSelection(),
                guidance=guidance,
                repeat_penalty=repeat_penalty,
            )
        )
        self.timestep_sampler = timestep_sampler(schedule.num_steps)
        self.train_noise_factor = train_noise_factor
        self.self_condition_prob = self_condition_prob
        self.self_condition_per_batch = self_condition_per_batch
        self.noisy_x_start = noisy_x_start
        self.unrolled_denoising = unrolled_denoising
        self.length_ratio = length_ratio
        self.length_offset = length_offset
        self.max_length = max_length

    @property
    def vocab_size(self) -> int:
        return self.denoiser.vocab_size

    @property
    def sampler(self) -> Sampler:
        """The default decoding's sampler (read-only: pass another ``Decoding`` to change it)."""
        assert self.decoding.sampler is not None
        return self.decoding.sampler

    @property
    def length_beam(self) -> int:
        return self.decoding.length_beam

    @property
    def noise_beam(self) -> int:
        return self.decoding.noise_beam

    def check_decoding(self, decoding: Decoding) -> Decoding:
        if decoding.sampler is None:
            raise DecodingError(
                f"decoding: {type(self).__name__} samples a diffusion chain and needs a sampler, got "
                f"{decoding.search.describe() if decoding.search is not None else 'none'}"
            )
        if decoding.selection.needs_scores and decoding.candidates > 1:
            raise DecodingError(
                f"decoding: selection {type(decoding.selection).__name__} ranks candidates by token scores, which the "
                f"continuous samplers do not give ({decoding.sampler.describe()}): use MBRSelection or FirstCandidate"
            )
        if decoding.length_beam > 1 and self.length_predictor is None:
            raise DecodingError(
                f"decoding: length_beam {decoding.length_beam} needs a model with a length predictor (Difformer-style); "
                "this model decodes one padded canvas per source: use noise_beam for more candidates"
            )
        check_guidance(decoding.guidance, type(self).__name__, self.null_condition, tokens=False)
        return decoding.replace(num_steps=self.schedule.num_steps)

    def evaluation_loss(self, batch: Seq2SeqBatch) -> tuple[Tensor, dict[str, Tensor]]:
        loss, terms, _, _ = self.compute_losses(batch)
        return loss, terms

    def on_fit_start(self) -> None:
        """Fit the output vocabulary on the training targets, unless a resumed run's checkpoint brought it."""
        super().on_fit_start()
        self.fit_output_vocabulary(self.denoiser.output_vocabulary)

    # ------------------------------------------------------------------ training
    def canvas_length(self, src_mask: Tensor) -> int:
        """Decoding canvas for a batch: ``min(max_length, ceil(ratio * longest source) + offset)``."""
        return canvas_length(src_mask, self.length_ratio, self.length_offset, self.max_length)

    def _pad_canvas(self, batch: Seq2SeqBatch) -> Tensor:
        assert batch.tgt_ids is not None
        pad_id = self.special_ids.pad
        length = max(batch.tgt_ids.shape[1], self.canvas_length(batch.src_mask))
        return F.pad(batch.tgt_ids, (0, length - batch.tgt_ids.shape[1]), value=pad_id)

    def compute_losses(self, batch: Seq2SeqBatch) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:
        """The training objective on one batch.

        Returns:
            the scalar loss, each term's batch mean (for logging), the steps ``t`` ``[B]`` and the
            per-example total ``[B]`` (unweighted, for the loss-aware timestep sampler).
        """
        if batch.tgt_ids is None or batch.tgt_mask is None:
            raise ValueError("training and validation batches need targets")
        cond = self.denoiser.encode(batch.src_ids, batch.src_mask)
        length_logits = length_targets = None
        if self.length_predictor is None:
            target = self._pad_canvas(batch)
            loss_mask = torch.ones_like(target, dtype=torch.bool)
            attention_mask = None
        else:
            target, loss_mask = batch.tgt_ids, batch.tgt_mask
            attention_mask = batch.tgt_mask
            length_logits = self.length_predictor(cond)
            length_targets = self.length_predictor.targets(batch.src_mask.sum(-1), batch.tgt_mask.sum(-1))
        if not self.training and self.denoiser.output_vocabulary is not None:
            warn_outside_vocabulary(self.denoiser.kept_columns(target)[loss_mask.bool()])
        drop = None
        if self.training:  # after the length predictor, which always reads the real source
            drop = dropped_rows(len(batch), self.null_condition, self.condition_dropout, self.device)
            if drop is not None and self.null_condition is not None:
                cond = cond.with_null(self.null_condition, drop)
        b, length = target.shape
        clean = self.denoiser.embed(target)
        t, weights = self.timestep_sampler.sample(b, self.device)
        z0 = clean
        if self.noisy_x_start:  # DiffuSeq's _get_x_start: z0 + sqrt(1 - abar_1) eps
            sigma_0 = (1.0 - self.schedule.alpha_bar(torch.ones_like(t), length)).clamp_min(0.0).sqrt()  # [B, L]
            z0 = clean + sigma_0[..., None].to(clean.dtype) * torch.randn_like(clean)
        unrolled = self.training and self.unrolled_denoising is not None and self.unrolled_denoising.applies()
        if unrolled:
            assert self.unrolled_denoising is not None
            z_t = self.unrolled_denoising.input_at(
                lambda z, s: self.denoiser(z, s, cond, attention_mask, None), z0, t, self.schedule, self.train_noise_factor
            )
        else:
            z_t = self.schedule.q_sample(z0, t, torch.randn_like(z0), self.train_noise_factor)
        self_cond = None
        if self.self_condition_per_batch:
            if self.self_condition_prob > 0 and float(torch.rand(())) < self.self_condition_prob:
                with torch.no_grad():
                    self_cond = self.denoiser(z_t, t, cond, attention_mask, None).detach()
        elif self.self_condition_prob > 0:
            with torch.no_grad():
                first = self.denoiser(z_t, t, cond, attention_mask, None)
            use = (torch.rand(b, 1, 1, device=self.device) < self.self_condition_prob).to(first.dtype)
            self_cond = first.detach() * use
        if any(term.needs_source_output for term in self.loss_terms):  # the keyword only then: older overrides lack it
            prediction = self.denoiser.predict(z_t, t, cond, attention_mask, self_cond, with_source=True)
        else:
            prediction = self.denoiser.predict(z_t, t, cond, attention_mask, self_cond)  # x0 (+ token logits: CDCD)
        x0_hat = prediction.x0
        if self.training and not unrolled:  # the adaptive schedule fits the error of the noised truth only
            self.schedule.observe(t, ((x0_hat.detach() - clean.detach()) ** 2).mean(-1), loss_mask)  # the clean target
        inputs = LossInputs(
            z0=z0,
            x0_hat=x0_hat,
            target_ids=target,
            mask=loss_mask,
            t=t,
            alpha_bar_final=self.schedule.alpha_bar(torch.full_like(t, self.schedule.num_steps), length),
            logits=self.denoiser.kept_logits,
            columns=self.denoiser.kept_columns,
            length_logits=length_logits,
            length_targets=length_targets,
            alpha_bar_t=self.schedule.alpha_bar(t, length),
            embedding_table=self.denoiser.embedding_table,
            prediction_logits=prediction.logits,
            source_x0=prediction.source_x0,
            source_z0=None if prediction.source_x0 is None else self.denoiser.embed(batch.src_ids),
            source_mask=None if prediction.source_x0 is None else self._kept_source(batch.src_mask, drop),
        )
        per_term = {term.name: term(inputs) for term in self.loss_terms}
        per_example = sum(term.weight * per_term[term.name] for term in self.loss_terms)
        loss = (per_example * weights).mean()
        return loss, {name: value.mean() for name, value in per_term.items()}, t, per_example.detach()

    @staticmethod
    def _kept_source(src_mask: Tensor, drop: Tensor | None) -> Tensor:
        """The source positions ``[B, S]`` the network saw: a row classifier-free training dropped (``drop`` ``[B]``)
        saw the null condition instead, with no embedding to reproduce."""
        return src_mask if drop is None else src_mask & ~drop[:, None]

    def training_step(self, batch: Seq2SeqBatch, batch_idx: int) -> Tensor:
        loss, terms, t, per_example = self.compute_losses(batch)
        self.log_training_loss(loss, terms, len(batch))  # stops on a non-finite loss before any statistic takes it
        # Statistics that steer training are kept identical on every rank: summed / gathered over ranks.
        self.schedule.commit_observations(self.all_reduce_sum)
        if self.timestep_sampler.learns:
            t, per_example = self.gather_ragged(t, per_example)
        self.timestep_sampler.update(t, per_example)
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
        """Decode ``B`` sources ``[B, S]`` with ``decoding`` (default: ``self.decoding``).

        The source is encoded once for the whole sampling loop. Each source gets ``length_beam`` lengths
        (from the length predictor) x ``noise_beam`` noise samples; the decoding's selection (MBR by default) picks
        one candidate per source. Without a length predictor all candidates share one padded canvas; with one,
        candidates of similar length are decoded together on a canvas as long as their longest
        (:func:`~lightning_diffusion.candidates.length_groups`), so short candidates do not carry the batch's
        longest canvas through every step. Positions past a candidate's predicted length hold the end token, so the
        hypothesis is cut there.
        """
        decoding = self.check_decoding(decoding if decoding is not None else self.decoding)
        assert decoding.sampler is not None
        cond = self.denoiser.encode(src_ids, src_mask)
        layout = candidate_layout(self.length_predictor, cond, src_mask, decoding, self.max_length, self.canvas_length(src_mask))
        guidance = decoding.guidance
        denoiser = self.denoiser if guidance is None else guidance.guide_latents(self.denoiser, self.null_condition)
        cond = cond.repeat_interleave(layout.per_source)
        sampler = decoding.sampler
        if layout.tgt_mask is None:
            out = sampler.sample(denoiser, self.schedule, cond, layout.length, None, generator, on_step)
            token_ids, nfe = self._rounded(out, None, decoding), out.nfe
        else:
            tgt_mask = layout.tgt_mask

            def sample_group(rows: Tensor, length: int, step: Callable[[int, int], None] | None) -> tuple[Tensor, int, None]:
                mask = tgt_mask[rows, :length]
                out = sampler.sample(denoiser, self.schedule, cond.select(rows), length, mask, generator, step)
                return self._rounded(out, mask, decoding), out.nfe, None

            token_ids, nfe, _ = sample_in_groups(tgt_mask, length_groups(tgt_mask.sum(-1)), sample_group, on_step)
        texts = choose_candidates(self, token_ids, layout, decoding)
        return Generation(texts=texts, nfe=nfe * decoding.calls_per_step, candidates=layout.per_source)

    def _rounded(self, out: SampleOutput, tgt_mask: Tensor | None, decoding: Decoding) -> Tensor:
        """The sampler's tokens ``[B, L]``, or with ``decoding.repeat_penalty`` its final latents rounded to the best
        sequence under the penalty (on a padded canvas, ``tgt_mask`` None, the end and padding ids may repeat)."""
        if decoding.repeat_penalty <= 0:
            return out.token_ids
        ids = self.special_ids
        exempt = (ids.eos, ids.pad) if tgt_mask is None else ()
        return round_without_repeats(self.denoiser, out.latents, tgt_mask, exempt, decoding.repeat_penalty)

    def decoding_settings(self, decoding: Decoding | None = None) -> str:
        """The settings every reported score comes with: the decoding's and the schedule."""
        described = super().decoding_settings(decoding)
        return f"{described}, schedule {type(self.schedule).__name__}(T={self.schedule.num_steps})"
