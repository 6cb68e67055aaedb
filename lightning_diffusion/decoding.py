"""Decoding settings as a value, and the one function that decodes a batch with them.

A model holds its default :class:`Decoding` (built from its recipe). Validation, test, predict, ``generate``,
the benchmarks and Python callers pass another one to :func:`decode_batch` (or to the model's ``generate``)
without changing the model: ``model.decoding.replace(steps=10, noise_beam=5)``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lightning_diffusion.selection import CandidateSelection, MBRSelection

if TYPE_CHECKING:
    from lightning_diffusion.autoregressive.search import Search
    from lightning_diffusion.guidance.base import Guidance
    from lightning_diffusion.samplers.chain import ChainSampler
    from lightning_diffusion.seq2seq import Seq2SeqModule
    from lightning_diffusion.types import Seq2SeqBatch


class DecodingError(ValueError):
    """Decoding settings that do not apply to a model (e.g. ``steps`` for an autoregressive model); the message
    says which setting and why."""


def constructor_options(obj: Any) -> dict[str, Any]:
    """The constructor arguments of ``obj`` read back from attributes of the same name (``steps``, ``eta``, ...);
    parameters without such an attribute are left out."""
    params = inspect.signature(type(obj).__init__).parameters
    return {
        name: getattr(obj, name)
        for name, p in params.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and hasattr(obj, name)
    }


def _defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}


def with_steps(sampler: ChainSampler, steps: int) -> ChainSampler:
    """A shallow copy of ``sampler`` walking ``steps`` steps (``sampler`` is not changed)."""
    copied = copy.copy(sampler)
    copied.steps = steps
    return copied


def carry_over_sampler(previous: ChainSampler, new: ChainSampler) -> tuple[ChainSampler, dict[str, Any], dict[str, Any]]:
    """``new`` with the options of ``previous`` it left at their defaults (e.g. ``clamp``, ``noise_factor`` when
    switching DDIM -> ancestral), so replacing a sampler changes only what was asked for.

    Returns:
        the sampler, the options carried over, and the options of ``previous`` that ``new``'s class has no
        parameter for (dropped; e.g. ``eta`` when switching to ancestral), both only where they differ from
        the defaults.
    """
    old = constructor_options(previous)
    old_defaults = _defaults(type(previous))
    new_options = constructor_options(new)
    new_defaults = _defaults(type(new))
    carried = {
        name: old[name]
        for name, value in new_options.items()
        if name in old and value == new_defaults.get(name, object()) and old[name] != value
    }
    dropped = {
        name: value
        for name, value in old.items()
        if name not in new_options and value != old_defaults.get(name, object())
    }
    return (type(new)(**{**new_options, **carried}) if carried else new), carried, dropped


@dataclass(frozen=True)
class Decoding:
    """How a model turns sources into hypotheses; the settings reported next to every score.

    Attributes:
        sampler: the diffusion update rule with its steps (None for autoregressive models).
        length_beam: lengths tried per source (needs a length predictor).
        noise_beam: noise samples decoded per length.
        selection: picks one of the ``length_beam x noise_beam`` candidates per source (never with the reference).
        search: the autoregressive search (greedy, beam); None for diffusion models.
        num_steps: the diffusion chain length ``T`` of the model's schedule (sampling steps above it are capped);
            filled in by the model.
        collapse_repeats: post-process: collapse runs of the same token id into one (``auf auf auf`` -> ``auf``)
            before detokenizing; off by default, reported in :meth:`describe` when on.
        guidance: steers diffusion decoding (:mod:`lightning_diffusion.guidance`, e.g. classifier-free guidance);
            None = unguided. Its network evaluations per step count in :attr:`nfe`.
        repeat_penalty: continuous families: round the final latents to the best token sequence under a penalty of
            this many nats per back-to-back repeat of a word, instead of each position's argmax
            (:mod:`~lightning_diffusion.samplers.no_repeat_rounding`: Viterbi over each position's 4 best ids;
            ``inf`` forbids repeats among them). 0 (default) = the argmax; reported in :meth:`describe` when on.
    """

    sampler: ChainSampler | None = None
    length_beam: int = 1
    noise_beam: int = 1
    selection: CandidateSelection = field(default_factory=MBRSelection)
    search: Search | None = None
    num_steps: int | None = None
    collapse_repeats: bool = False
    guidance: Guidance | None = None
    repeat_penalty: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "repeat_penalty", _penalty(self.repeat_penalty))
        for name in ("length_beam", "noise_beam"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DecodingError(f"decoding: {name} must be an integer >= 1, got {value!r}")
        if (self.sampler is None) == (self.search is None):
            raise DecodingError("decoding: exactly one of sampler (diffusion) and search (autoregressive) is set")
        if self.search is not None and (self.length_beam, self.noise_beam) != (1, 1):
            raise DecodingError(
                f"decoding: length_beam and noise_beam apply to diffusion models; the autoregressive search has "
                f"beam size {self.search.beam_size} (got length_beam {self.length_beam}, noise_beam {self.noise_beam})"
            )
        if self.search is not None and self.repeat_penalty > 0:
            raise DecodingError(
                f"decoding: repeat_penalty applies to the rounding of continuous diffusion models, not to {self.search.describe()}"
            )
        if self.search is not None and self.guidance is not None:
            raise DecodingError(f"decoding: {self.guidance.describe()} applies to diffusion models, not to {self.search.describe()}")

    @property
    def steps(self) -> int | None:
        """Sampling steps asked for (diffusion); None for an autoregressive search."""
        return self.sampler.steps if self.sampler is not None else None

    @property
    def calls_per_step(self) -> int:
        """Network evaluations per sampling step: the guidance's (2 for classifier-free guidance), else 1."""
        return self.guidance.calls_per_step if self.guidance is not None else 1

    @property
    def nfe(self) -> int | None:
        """Network evaluations per candidate: ``min(steps, T)`` sampling steps for diffusion (the respaced chain's
        length) x :attr:`calls_per_step`; None for autoregressive search, where it is the number of generated
        tokens and varies."""
        if self.sampler is None:
            return None
        steps = min(self.sampler.steps, self.num_steps) if self.num_steps is not None else self.sampler.steps
        return steps * self.calls_per_step

    @property
    def candidates(self) -> int:
        """Candidates decoded per source: ``length_beam x noise_beam`` (diffusion) or the beam size (search)."""
        if self.search is not None:
            return int(self.search.beam_size)
        return self.length_beam * self.noise_beam

    @property
    def reports_steps(self) -> bool:
        """Whether decoding walks a chain of sampling steps (``on_step(done, total)`` is called)."""
        return self.sampler is not None

    def replace(self, **changes: Any) -> Decoding:
        """A copy with ``changes`` (``self`` is not changed). ``steps=K`` copies the sampler with ``K`` steps;
        ``sampler=S`` takes ``S`` as it is (:func:`carry_over_sampler` keeps the current sampler's options)."""
        if changes.get("search") is not None and self.sampler is not None and "sampler" not in changes:
            raise DecodingError(
                f"decoding: search applies to autoregressive models; this model needs a sampler (it samples with "
                f"{self.sampler.describe()})"
            )
        if changes.get("sampler") is not None and self.search is not None:
            raise DecodingError(
                f"decoding: sampler applies to diffusion models; this model decodes with {self.search.describe()}"
            )
        steps = changes.pop("steps", None)
        if steps is not None:
            current = changes.get("sampler", self.sampler)
            if current is None:
                raise DecodingError(
                    f"decoding: steps={steps} applies to diffusion models; this model decodes with "
                    f"{self.search.describe() if self.search is not None else 'a search'}"
                )
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
                raise DecodingError(f"decoding: steps must be an integer >= 1, got {steps!r}")
            changes["sampler"] = with_steps(current, steps)
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """The settings in words, e.g. ``DDIMSampler(steps=20, ...), length beam 3 x noise beam 1, MBR ...,
        NFE 20``."""
        collapsed = ", consecutive repeated tokens collapsed" if self.collapse_repeats else ""
        if self.search is not None:
            return f"{self.search.describe()}{collapsed}, NFE = decoder steps (KV cache)"
        assert self.sampler is not None
        beams = f"length beam {self.length_beam} x noise beam {self.noise_beam}"
        chosen = f", {self.selection.describe()} over the {self.candidates} candidates" if self.candidates > 1 else ""
        guided = f", {self.guidance.describe()}" if self.guidance is not None else ""
        rounding = f", rounding with repeat penalty {self.repeat_penalty:g}" if self.repeat_penalty > 0 else ""
        return (
            f"{self.sampler.describe()}{guided}, {beams}{chosen}{rounding}{collapsed}, NFE {self.nfe} per candidate "
            "(candidates decoded in parallel)"
        )


def _penalty(value: Any) -> float:
    """A repeat penalty as a float >= 0: any real number, or ``"inf"`` (what a command line gives)."""
    if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", ".inf", "infinity"):
        return math.inf
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) >= 0:
        raise DecodingError(f"decoding: repeat_penalty must be a number >= 0 (or inf), got {value!r}")
    return float(value)


def collapse_repeats(ids: list[int]) -> list[int]:
    """``ids`` with every run of the same id reduced to one: ``[5, 5, 7, 5, 5, 5] -> [5, 7, 5]``."""
    return [token for i, token in enumerate(ids) if i == 0 or token != ids[i - 1]]


def is_empty_source(text: str, length: int) -> bool:
    """A source with no tokens or only whitespace: it gets an empty hypothesis and is not decoded (the model's
    output from an all-padding source would be unconditioned text)."""
    return length == 0 or not text.strip()


@dataclass
class DecodedBatch:
    """A decoded batch: rows ``{"index", "source", "hypothesis"[, "reference"]}`` in batch order, with the cost.

    Attributes:
        rows: one per example of the batch, empty sources included (with an empty hypothesis).
        nfe: network evaluations per candidate (None when every source was empty).
        candidates: candidates decoded per source (0 when every source was empty).
    """

    rows: list[dict[str, Any]]
    nfe: int | None
    candidates: int


@torch.no_grad()
def decode_batch(
    module: Seq2SeqModule,
    batch: Seq2SeqBatch,
    decoding: Decoding | None = None,
    seed: int = 0,
    on_step: Callable[[int, int], None] | None = None,
) -> DecodedBatch:
    """Decode ``batch`` with ``decoding`` (default: the model's own): the one decoding path of validation, test,
    predict, ``generate`` and the benchmarks.

    The noise comes from a generator seeded with ``seed + batch.index[0]``, so a batch's hypotheses depend only on
    its own examples, the seed and the settings. Empty sources (see :func:`is_empty_source`) are left out of the
    model call and get an empty hypothesis.
    """
    lengths = batch.src_mask.sum(-1).tolist()
    keep = [i for i in range(len(batch)) if not is_empty_source(batch.src_text[i], int(lengths[i]))]
    hypotheses = [""] * len(batch)
    nfe: int | None = None
    candidates = 0
    if keep:
        device = module.device
        generator = torch.Generator(device=device).manual_seed(seed + int(batch.index[0]))
        sub = batch if len(keep) == len(batch) else batch.select(keep)
        result = module.generate(
            sub.src_ids.to(device), sub.src_mask.to(device), generator, on_step, decoding=decoding
        )
        for i, text in zip(keep, result.texts, strict=True):
            hypotheses[i] = text
        nfe, candidates = result.nfe, result.candidates
    rows = []
    for i, hypothesis in enumerate(hypotheses):
        row: dict[str, Any] = {"index": int(batch.index[i]), "source": batch.src_text[i], "hypothesis": hypothesis}
        if batch.tgt_text is not None:
            row["reference"] = batch.tgt_text[i]
        rows.append(row)
    return DecodedBatch(rows=rows, nfe=nfe, candidates=candidates)


__all__ = [
    "DecodedBatch",
    "Decoding",
    "DecodingError",
    "carry_over_sampler",
    "collapse_repeats",
    "constructor_options",
    "decode_batch",
    "is_empty_source",
    "with_steps",
]
