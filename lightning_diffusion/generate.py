"""``lightning-diffusion generate``: decode ad-hoc text with a trained model, from the arguments or streamed from stdin.

Hypotheses go to stdout, one line per input line and in input order (an empty input line gives an empty output
line), flushed after every batch; the decoding settings, the NFE, an optional progress bar and a final summary go
to stderr, so ``cat big.txt | lightning-diffusion generate model/ > out.txt`` holds only hypotheses and keeps one
batch in memory at a time.

Randomness: batch ``k`` (input lines ``k * batch_size`` ...) is decoded by
:func:`~lightning_diffusion.decoding.decode_batch`, as in validation, with a generator seeded with
``seed + index of its first line``. A batch's output therefore depends only on its own lines, the seed and
``batch_size``; the same input, seed and batch size always give the same output,
however the input arrives (arguments, a pipe, a slow terminal). A different ``batch_size`` regroups the lines, so
the noise (and the canvas shared by a batch) differ and hypotheses of a diffusion model may differ.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import torch

from lightning_diffusion.data.jsonl import jsonl_line
from lightning_diffusion.data.sources import SourceReader, source_batch
from lightning_diffusion.data.tokenizer import TokenizerError
from lightning_diffusion.decoding import Decoding, decode_batch
from lightning_diffusion.decoding_flags import (
    DEFAULT_MAX_SRC_LEN,
    GenerateError,
    decoding_from_flags,
    trained_max_src_len,
)
from lightning_diffusion.pretrained import CheckpointError, load_pretrained
from lightning_diffusion.samplers.chain import ChainSampler
from lightning_diffusion.selection import CandidateSelection
from lightning_diffusion.seq2seq import Seq2SeqModule

DEFAULT_BATCH_SIZE = 32
PROGRESS_DELAY_S = 1.0  # progress="auto": a batch's bar appears only once its sampling has run this long


@dataclass
class Hypothesis:
    """One output line: the source, its hypothesis and the network evaluations spent on it (0 for an empty line)."""

    index: int
    source: str
    hypothesis: str
    nfe: int = 0
    candidates: int = 0
    truncated: bool = False


# ---------------------------------------------------------------------------------------------- decoding
def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # None, closed or replaced streams
        return False


class _StepBar:
    """A tqdm bar over one batch's diffusion steps (``on_step(done, total)``), created on the first step."""

    def __init__(self, enabled: bool, delay: float, description: str) -> None:
        self.enabled, self.delay, self.description = enabled, delay, description
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=self.description,
                unit="step",
                leave=False,
                file=sys.stderr,
                delay=self.delay,
            )
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def generate_batches(
    module: Seq2SeqModule,
    sources: Iterable[str],
    batch_size: int = 32,
    seed: int = 0,
    max_src_len: int = DEFAULT_MAX_SRC_LEN,
    progress: Literal["auto", "always", "never"] = "never",
    decoding: Decoding | None = None,
) -> Iterator[list[Hypothesis]]:
    """Decode ``sources`` ``batch_size`` lines at a time with ``decoding`` (default: the model's own), yielding
    each batch's hypotheses in input order as soon as it is decoded, through
    :func:`~lightning_diffusion.decoding.decode_batch` (the path of validation and predict). Empty
    (whitespace-only) lines are not decoded and give an empty hypothesis.

    Batch ``k`` is seeded with ``seed + index of its first line`` (see the module docstring for what that guarantees).
    """
    if batch_size < 1:
        raise GenerateError(f"--batch_size must be >= 1, got {batch_size}")
    if max_src_len < 1:
        raise GenerateError(f"--max_src_len must be >= 1, got {max_src_len}")
    decoding = module.check_decoding(decoding if decoding is not None else module.decoding)
    show = progress == "always" or (progress == "auto" and _isatty(sys.stderr))
    delay = PROGRESS_DELAY_S if progress == "auto" else 0.0
    lines = iter(sources)
    start = 0
    while chunk := list(islice(lines, batch_size)):
        batch, counts = source_batch(module.tokenizer, module.special_ids, chunk, start, max_src_len)
        bar = _StepBar(show and decoding.reports_steps, delay, f"sampling batch {start // batch_size + 1}")
        try:
            decoded = decode_batch(module, batch, decoding, seed, bar if decoding.reports_steps else None)
        finally:
            bar.close()
        out = []
        for row, count in zip(decoded.rows, counts, strict=True):
            hyp = Hypothesis(index=row["index"], source=row["source"], hypothesis=row["hypothesis"])
            if row["source"].strip() and count:
                hyp.nfe, hyp.candidates = decoded.nfe or 0, decoded.candidates
                hyp.truncated = count > max_src_len
            out.append(hyp)
        yield out
        start += len(chunk)


# ---------------------------------------------------------------------------------------------- command
def _resolve_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GenerateError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    try:
        torch.device(device)
    except RuntimeError as err:
        raise GenerateError(f"--device {device!r} is not a device: {err}") from None
    return device


def _one_line(text: str) -> str:
    """A hypothesis on one output line (a decoded newline would break the line-per-input alignment)."""
    return " ".join(text.splitlines())


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def generate(
    model: str,
    text: list[str] | None = None,
    tokenizer: str | None = None,
    steps: int | None = None,
    sampler: Callable[[int], ChainSampler] | None = None,
    length_beam: int | None = None,
    noise_beam: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    max_src_len: int | None = None,
    device: str | None = None,
    progress: Literal["auto", "always", "never"] = "auto",
    output: str | None = None,
    collapse_repeats: bool | None = None,
    guidance: float | None = None,
    selection: CandidateSelection | None = None,
    repeat_penalty: float | Literal["inf"] | None = None,
) -> None:
    """Translate or summarize text with a trained model: hypotheses on stdout (one line per input line, input order).

    Reads the texts given, else stdin line by line (``-`` stands for stdin); each batch is decoded as soon as it is
    full (or at the end of the input) and flushed. Settings, NFE and a summary go to stderr.
    Defaults of the decoding flags are the model's own settings; nothing is written back to the model files.

    Args:
        model: an ``export`` directory or a ``.ckpt`` written by ``lightning-diffusion fit``.
        text: sources to decode, given after MODEL (``generate MODEL "text one" "text two"``) or as repeated
            ``--text+ SENTENCE``; ``-`` or none: read stdin.
        tokenizer: tokenizer directory (default: the export's ``tokenizer/``, or ``<run dir>/tokenizer``).
        steps: sampling steps = network evaluations (NFE) per candidate (diffusion models).
        sampler: a Sampler class by name or class path (``DDIMSampler``, ``AncestralSampler``, ...) with its
            options as ``--sampler.eta 0.5``; its steps are ``--steps`` (default: the model's).
        length_beam: lengths tried per source (needs a length predictor).
        noise_beam: noise samples per length. MBR picks one of ``length_beam x noise_beam`` candidates per source
            (the MBR pool size is their product), decoded in parallel in groups of similar length.
        batch_size: sentences per batch (default 32; 1 when reading stdin from a terminal, so each line is
            answered as it is typed).
        seed: decoding seed (default: the model's ``decode_seed``); batch ``k`` uses ``seed + its first line's index``.
        max_src_len: sources are truncated to this many tokens (default: the run's ``data.max_src_len``).
        device: ``cpu``, ``cuda`` or ``cuda:N`` (default: cuda when available).
        progress: bar over the diffusion steps on stderr: ``auto`` (stderr is a terminal and a batch samples for
            more than a second), ``always`` or ``never``.
        output: also write JSONL rows ``{"source", "hypothesis", "nfe", "candidates"}`` here (``nfe`` per candidate).
        collapse_repeats: collapse runs of the same token into one before detokenizing (a post-process against
            repeated words; reported with the decoding settings; default: the model's, off).
        guidance: classifier-free guidance scale ``w`` (needs a model trained with ``model.condition_dropout > 0``;
            ``w = 1`` is plain conditional decoding, ``w > 1`` follows the source more strongly; each step then runs a
            conditional and an unconditional branch, counted twice in the NFE). Default: the model's (none).
        selection: how one of a source's candidates is picked, by name or class path: ``MBRSelection`` (consensus),
            ``FirstCandidate``, ``ModelScoreSelection`` (the model's mean token log-probability; mask-predict's
            length-beam rule, discrete re-masking samplers). Default: the model's (MBR).
        repeat_penalty: continuous families: round to the best token sequence under this penalty (nats) per
            back-to-back repeat of a word instead of each position's argmax (0 = argmax; ``inf`` = no repeats among each
            position's 4 best ids); reported with the decoding settings. Default: the model's.
    """
    try:
        _run(
            model,
            text,
            tokenizer,
            steps,
            sampler,
            length_beam,
            noise_beam,
            batch_size,
            seed,
            max_src_len,
            device,
            progress,
            output,
            collapse_repeats,
            guidance,
            selection,
            repeat_penalty,
        )
    except (GenerateError, TokenizerError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None
    except BrokenPipeError:  # e.g. `| head`: stop quietly, and keep Python from complaining at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1) from None


def _run(
    model: str,
    text: list[str] | None,
    tokenizer: str | None,
    steps: int | None,
    sampler: Callable[[int], ChainSampler] | None,
    length_beam: int | None,
    noise_beam: int | None,
    batch_size: int | None,
    seed: int | None,
    max_src_len: int | None,
    device: str | None,
    progress: Literal["auto", "always", "never"],
    output: str | None,
    collapse_repeats: bool | None = None,
    guidance: float | None = None,
    selection: CandidateSelection | None = None,
    repeat_penalty: float | Literal["inf"] | None = None,
) -> None:
    for flag, value in (("--batch_size", batch_size), ("--max_src_len", max_src_len)):
        if value is not None and value < 1:
            raise GenerateError(f"{flag} must be >= 1, got {value}")
    resolved = _resolve_device(device)
    if not Path(model).exists():
        raise CheckpointError(f"{model}: no such export directory or checkpoint file")
    module = load_pretrained(model, tokenizer, map_location=resolved)
    decoding, notes = decoding_from_flags(
        module, steps, sampler, length_beam, noise_beam, collapse_repeats, guidance, selection, repeat_penalty
    )
    seed = module.decode_seed if seed is None else seed
    max_src_len = trained_max_src_len(model) if max_src_len is None else max_src_len
    step_note = f", trained {module.checkpoint_step} steps" if module.checkpoint_step is not None else ""
    _stderr(f"model: {model} ({type(module).__name__}{step_note}) on {resolved}")
    for note in notes:
        _stderr(f"note: {note}")
    _stderr(f"decoding: {module.decoding_settings(decoding)}")
    if batch_size is None:
        interactive = (not text or "-" in text) and _isatty(sys.stdin)
        batch_size = 1 if interactive else DEFAULT_BATCH_SIZE
    _stderr(f"batch size {batch_size}, seed {seed}, sources cut at {max_src_len} tokens (max_src_len)")

    stdout = sys.stdout
    if hasattr(stdout, "reconfigure") and (stdout.encoding or "").lower().replace("-", "") != "utf8":
        stdout.reconfigure(encoding="utf-8")
    reader = SourceReader(text, sys.stdin)

    jsonl = open(output, "w", encoding="utf-8") if output else None  # noqa: SIM115 (closed below)
    sentences = decoded = calls = truncated = 0
    nfe_shown = False
    began = time.perf_counter()
    try:
        batches = generate_batches(module, reader, batch_size, seed, max_src_len, progress, decoding)
        for rows in batches:
            first = next((row for row in rows if row.candidates), None)
            if first is not None and not nfe_shown:  # once, before the first hypotheses
                nfe_shown = True
                varies = "" if decoding.reports_steps else " (first batch; varies)"
                _stderr(
                    f"NFE: {first.nfe} network evaluations per candidate x {first.candidates} candidates = "
                    f"{first.nfe * first.candidates} per sentence{varies}"
                )
            for row in rows:
                stdout.write(_one_line(row.hypothesis) + "\n")
                truncated += row.truncated
                if row.candidates:
                    decoded += 1
                    calls += row.nfe * row.candidates
                if jsonl is not None:
                    record = {
                        "source": row.source,
                        "hypothesis": row.hypothesis,
                        "nfe": row.nfe,
                        "candidates": row.candidates,
                    }
                    jsonl.write(jsonl_line(record))
            sentences += len(rows)
            stdout.flush()
            if jsonl is not None:
                jsonl.flush()
    finally:
        if jsonl is not None:
            jsonl.close()
    wall = time.perf_counter() - began
    rate = sentences / wall if wall > 0 else 0.0
    per_sentence = f", {calls / decoded:.0f} network evaluations per sentence" if decoded else ""
    empty = sentences - decoded
    notes = [f"{empty} empty"] if empty else []
    notes += [f"{truncated} cut at {max_src_len} tokens"] if truncated else []
    notes += [f"{reader.replaced} with bytes that are not UTF-8, replaced by U+FFFD"] if reader.replaced else []
    noted = f" ({', '.join(notes)})" if notes else ""
    _stderr(
        f"generated {sentences} sentence{'' if sentences == 1 else 's'}{noted} in {wall:.2f} s "
        f"({rate:.2f} sentences/s{per_sentence})" + (f"; wrote {output}" if output else "")
    )


def expand_positional_texts(argv: list[str]) -> list[str]:
    """``MODEL TEXT ... [options]`` -> ``MODEL --text+=TEXT ... [options]``.

    jsonargparse builds one positional per required parameter and has no variadic positionals, so the bare texts
    after ``MODEL`` are rewritten into the repeatable ``--text+``. Every ``--option`` takes one value unless written
    ``--option=value`` (``-h``/``--help`` and ``--print_config`` take none); ``--`` ends the options, so a text may
    begin with ``-``; a lone ``-`` is a text meaning stdin.
    """
    flagless = {"-h", "--help", "--print_config"}
    out: list[str] = []
    seen_model = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest = argv[i + 1 :]
            if not seen_model and rest:
                out.append(rest[0])
                seen_model, rest = True, rest[1:]
            out += [f"--text+={item}" for item in rest]
            break
        if arg.startswith("-") and arg != "-":
            out.append(arg)
            if "=" not in arg and arg not in flagless and i + 1 < len(argv):
                out.append(argv[i + 1])
                i += 1
        elif not seen_model:
            out.append(arg)
            seen_model = True
        else:
            out.append(f"--text+={arg}")
        i += 1
    return out


generate.prepare_args = expand_positional_texts  # type: ignore[attr-defined]


__all__ = [
    "GenerateError",
    "Hypothesis",
    "decoding_from_flags",
    "expand_positional_texts",
    "generate",
    "generate_batches",
]
