"""The decoding flags of ``generate`` and ``distill`` applied to a model's own :class:`Decoding`, and the training
settings a command reads back from a checkpoint or export (the source truncation)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from lightning_diffusion.decoding import Decoding, DecodingError, carry_over_sampler
from lightning_diffusion.guidance import ClassifierFreeGuidance
from lightning_diffusion.pretrained import CONFIG_FILE
from lightning_diffusion.samplers.chain import ChainSampler
from lightning_diffusion.selection import CandidateSelection
from lightning_diffusion.seq2seq import Seq2SeqModule

DEFAULT_MAX_SRC_LEN = 128  # Seq2SeqDataModule's default, when the run's data settings cannot be found


class GenerateError(ValueError):
    """A ``generate`` flag that does not apply to the model, or a bad value; the message says which."""


def decoding_from_flags(
    module: Seq2SeqModule,
    steps: int | None = None,
    sampler: Callable[[int], ChainSampler] | None = None,
    length_beam: int | None = None,
    noise_beam: int | None = None,
    collapse_repeats: bool | None = None,
    guidance: float | None = None,
    selection: CandidateSelection | None = None,
    repeat_penalty: float | str | None = None,
) -> tuple[Decoding, list[str]]:
    """The model's own :class:`Decoding` with the flags applied by ``replace`` (the model is not changed).
    ``guidance`` is a classifier-free guidance scale ``w`` (:class:`ClassifierFreeGuidance`).

    ``--sampler`` keeps the current sampler's options that the new one leaves at their defaults (``clamp``,
    ``noise_factor``, ...) and its steps unless ``--steps`` is given.

    Returns:
        the decoding and notes for stderr (options carried over or dropped by ``--sampler``).

    Raises:
        GenerateError: a flag the model has no use for, or a bad value (the message names the flag).
    """
    given = {
        "--steps": steps, "--sampler": sampler, "--length_beam": length_beam, "--noise_beam": noise_beam, "--guidance": guidance,
        "--selection": selection, "--repeat_penalty": repeat_penalty or None,  # 0 is the argmax every model has
    }  # fmt: skip
    for flag in ("--steps", "--length_beam", "--noise_beam"):
        if given[flag] is not None and given[flag] < 1:  # type: ignore[operator]
            raise GenerateError(f"{flag} must be >= 1, got {given[flag]}")
    current = module.decoding
    if collapse_repeats is not None:
        current = current.replace(collapse_repeats=collapse_repeats)
    used = [flag for flag, value in given.items() if value is not None]
    if current.sampler is None:
        if used:
            raise GenerateError(
                f"{', '.join(used)} apply to diffusion models (sampling steps, sampler, length and noise beams, candidate selection); "
                f"this {type(module).__name__} has no sampler; it decodes with {module.decoding_settings()}"
            )
        return current, []
    notes: list[str] = []
    changes: dict[str, Any] = {}
    if sampler is not None:
        chosen, carried, dropped = carry_over_sampler(current.sampler, sampler(steps or current.sampler.steps))
        changes["sampler"] = chosen
        name, old = type(chosen).__name__, type(current.sampler).__name__
        if carried:
            notes.append(f"--sampler {name} keeps {_options(carried)} from the model's {old}")
        if dropped:
            notes.append(f"--sampler {name} drops {_options(dropped)} of the model's {old} ({name} has no such option)")
    elif steps is not None:
        changes["steps"] = steps
    if length_beam is not None:
        changes["length_beam"] = length_beam
    if noise_beam is not None:
        changes["noise_beam"] = noise_beam
    if selection is not None:
        changes["selection"] = selection
    if repeat_penalty is not None:
        changes["repeat_penalty"] = repeat_penalty
    if guidance is not None:
        try:
            changes["guidance"] = ClassifierFreeGuidance(guidance)
        except ValueError as err:
            raise GenerateError(f"--guidance: {str(err).removeprefix('ClassifierFreeGuidance: ')}") from None
    try:
        return module.check_decoding(current.replace(**changes)), notes
    except DecodingError as err:
        message = str(err).removeprefix("decoding: ")
        for flag in ("length_beam", "noise_beam", "steps", "repeat_penalty"):
            message = message.replace(f"{flag} ", f"--{flag} ", 1) if message.startswith(flag) else message
        raise GenerateError(message) from None


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in options.items())


def trained_max_src_len(path: str | Path) -> int:
    """The run's ``data.max_src_len`` (from an export's ``config.yaml`` or a checkpoint's data hyperparameters),
    else :data:`DEFAULT_MAX_SRC_LEN`: sources are truncated as in training."""
    source = Path(path)
    value: Any = None
    try:
        if source.is_dir():
            config = yaml.safe_load((source / CONFIG_FILE).read_text(encoding="utf-8")) or {}
            value = ((config.get("data") or {}).get("init_args") or {}).get("max_src_len")
        else:
            checkpoint = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
            value = (checkpoint.get("datamodule_hyper_parameters") or {}).get("max_src_len")
    except Exception:  # a missing or unusual file only loses the default, never the run
        value = None
    return int(value) if isinstance(value, int) and value > 0 else DEFAULT_MAX_SRC_LEN


__all__ = ["DEFAULT_MAX_SRC_LEN", "GenerateError", "decoding_from_flags", "trained_max_src_len"]
