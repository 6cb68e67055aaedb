"""``lightning-diffusion distill``: sequence-level knowledge distillation data (Kim & Rush, 2016).

A trained teacher (usually the autoregressive baseline with beam search) decodes the sources of a training file;
each output line is ``{"src": source, "tgt": teacher hypothesis}``, in input order, so a student trains on it with
``--data.train_file distilled.jsonl``. Non-autoregressive and diffusion students learn much more easily from such
targets (one mode per source instead of the references' many).

Decoding goes through :func:`~lightning_diffusion.decoding.decode_batch` in consecutive batches of the input.
Every finished batch is appended and flushed, so a crashed run resumes where it stopped (``distill`` again with
the same arguments): the complete lines already written are counted and skipped, a partly written last line is cut
off, nothing is written twice. A sidecar ``<output>.provenance.json`` records what produced the file: the teacher
file's sha256, the decoding settings, the tokenizer fingerprint, the input file's sha256 and the counts; resuming
with a different teacher, input or decoding is refused.

Several processes share the work with ``--num_shards N --shard K`` (or, under ``torchrun``, from ``WORLD_SIZE`` and
``RANK``): the input's consecutive batches are dealt round-robin, batch ``b`` to shard ``b mod N``; shard ``K``
writes ``<output>.shard-K-of-N`` (resumable like a single run, with its own sidecar) and the shard that finishes last
joins the shards into ``<output>`` in input order. The joined file equals a single process's, batch for batch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lightning_diffusion.autoregressive.search import Search
from lightning_diffusion.data.jsonl import DataError, jsonl_line, read_examples, resolve_path
from lightning_diffusion.data.sources import source_batch
from lightning_diffusion.data.tokenizer import TokenizerError
from lightning_diffusion.decoding import Decoding, DecodingError, decode_batch
from lightning_diffusion.decoding_flags import GenerateError, decoding_from_flags, trained_max_src_len
from lightning_diffusion.pretrained import WEIGHTS_FILE, CheckpointError, load_pretrained
from lightning_diffusion.samplers.chain import ChainSampler
from lightning_diffusion.seq2seq import Seq2SeqModule

PROVENANCE_SUFFIX = ".provenance.json"


class DistillError(ValueError):
    """A distillation that cannot start or resume as asked; the message says why and what to do."""


def file_sha256(path: Path) -> str:
    """sha256 hex of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def teacher_sha256(path: Path) -> str:
    """sha256 of the teacher's weights: the checkpoint file, or an export directory's ``model.safetensors``."""
    return file_sha256(path / WEIGHTS_FILE if path.is_dir() else path)


def complete_lines(path: Path) -> int:
    """Number of newline-terminated lines of ``path``; a partly written last line is cut off (the file is
    truncated after the last newline). 0 when the file does not exist."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with path.open("r+b") as handle:
            handle.truncate(end)
    return data[:end].count(b"\n")


def _identity(teacher: Path, source: Path, module: Seq2SeqModule, decoding: Decoding, max_src_len: int) -> dict[str, Any]:
    """What must not change between a run and its resumption."""
    return {
        "teacher": str(teacher),
        "teacher_sha256": teacher_sha256(teacher),
        "teacher_class": type(module).__name__,
        "teacher_step": module.checkpoint_step,
        "tokenizer_fingerprint": module.tokenizer_fingerprint,
        "decoding": module.decoding_settings(decoding),
        "input": str(source),
        "input_sha256": file_sha256(source),
        "max_src_len": max_src_len,
    }


def shard_path(output: Path, shard: int, num_shards: int) -> Path:
    """Where shard ``shard`` of ``num_shards`` writes: ``<output>.shard-K-of-N``."""
    return output.with_name(f"{output.name}.shard-{shard}-of-{num_shards}")


def shard_blocks(total: int, batch_size: int, shard: int, num_shards: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` input ranges of one shard: consecutive batches of ``batch_size`` dealt round-robin,
    batch ``b`` to shard ``b mod num_shards``."""
    starts = range(0, total, batch_size)
    return [(start, min(start + batch_size, total)) for b, start in enumerate(starts) if b % num_shards == shard]


def check_shard(shard: int, num_shards: int) -> None:
    if not isinstance(num_shards, int) or num_shards < 1:
        raise DistillError(f"--num_shards must be an integer >= 1, got {num_shards!r}")
    if not isinstance(shard, int) or not 0 <= shard < num_shards:
        raise DistillError(f"--shard must be in 0..{num_shards - 1} (--num_shards {num_shards}), got {shard!r}")


def _write_provenance(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def distill_file(
    module: Seq2SeqModule,
    teacher: Path,
    source: Path,
    output: Path,
    decoding: Decoding | None = None,
    batch_size: int = 64,
    seed: int = 0,
    max_src_len: int = 128,
    src_key: str = "src",
    tgt_keys: tuple[str, ...] = ("tgt", "trg"),
    progress: Callable[[int, int], None] | None = None,
    shard: int = 0,
    num_shards: int = 1,
) -> dict[str, Any]:
    """Decode every source of ``source`` with ``module`` and append ``{"src", "tgt"}`` lines to ``output``,
    resuming after the complete lines already there. Returns the provenance record (also written beside ``output``).

    With ``num_shards > 1`` only shard ``shard``'s batches are decoded, into :func:`shard_path`; when every shard is
    complete the shards are joined into ``output`` (:func:`join_shards`; the record then says ``joined``).
    ``progress(done, total)`` is called after every batch (examples written so far, examples to write).
    """
    if batch_size < 1:
        raise DistillError(f"--batch_size must be >= 1, got {batch_size}")
    check_shard(shard, num_shards)
    decoding = module.check_decoding(decoding if decoding is not None else module.decoding)
    examples, stats = read_examples(source, src_key=src_key, tgt_keys=tgt_keys, require_target=False, empty="skip")
    identity = _identity(teacher, source, module, decoding, max_src_len)
    blocks = [(0, len(examples))]
    if num_shards > 1:
        # the batch size decides which lines a shard holds: it must not change on resumption
        identity.update(shard=shard, num_shards=num_shards, batch_size=batch_size)
        blocks = shard_blocks(len(examples), batch_size, shard, num_shards)
        final, output = output, shard_path(output, shard, num_shards)
    mine = sum(end - start for start, end in blocks)  # lines this process writes
    sidecar = output.with_name(output.name + PROVENANCE_SUFFIX)
    done = complete_lines(output)
    started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    record: dict[str, Any] = {**identity, "started": started, "examples": mine, "skipped_empty": stats.empty_skipped}
    if done:
        if not sidecar.is_file():
            raise DistillError(
                f"{output} already has {done} lines but no {sidecar.name}: it was not written by distill; "
                "remove it or choose another --output"
            )
        previous = json.loads(sidecar.read_text(encoding="utf-8"))
        changed = [key for key, value in identity.items() if previous.get(key) != value]
        if changed:
            raise DistillError(
                f"{output} was written with another {', '.join(changed)} (see {sidecar.name}); resume with the same "
                "teacher, input and decoding settings, or choose another --output"
            )
        if done > mine:
            raise DistillError(f"{output} has {done} lines but only {mine} examples of {source} belong in it")
        record["started"] = previous.get("started", started)
        record["resumed_at"] = [*previous.get("resumed_at", []), done]
    empty_hypotheses = 0
    output.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with output.open("a", encoding="utf-8") as handle:
        offset = 0  # lines of this output before the block
        for begin, end in blocks:
            # the block's part not written yet, in batches of at most batch_size consecutive input lines
            first = min(end, begin + max(0, done - offset))
            offset += end - begin
            for start in range(first, end, batch_size):
                chunk = examples[start : min(start + batch_size, end)]
                batch, _ = source_batch(module.tokenizer, module.special_ids, [ex.src for ex in chunk], start, max_src_len)
                rows = decode_batch(module, batch, decoding, seed).rows
                for ex, row in zip(chunk, rows, strict=True):
                    empty_hypotheses += not row["hypothesis"].strip()
                    handle.write(jsonl_line({src_key: ex.src, tgt_keys[0]: row["hypothesis"]}))
                handle.flush()
                done += len(chunk)
                _write_provenance(sidecar, {**record, "written": done, "complete": False})
                if progress is not None:
                    progress(done, mine)
    record.update(
        written=done,
        complete=True,
        empty_hypotheses_this_run=empty_hypotheses,
        finished=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    )
    from lightning_diffusion import __version__

    record["library_version"] = __version__
    _write_provenance(sidecar, record)
    if num_shards > 1:
        record["joined"] = join_shards(final, num_shards)
    return record


def join_shards(output: Path, num_shards: int) -> bool:
    """Join the ``num_shards`` shard files of ``output`` into ``output`` in input order, when every shard is complete
    and all were written with the same teacher, input, decoding and batch size; returns whether it joined. The join is
    written to a temporary file and renamed, so a reader never sees a half-joined file (two shards finishing at once
    both write the same content)."""
    records = []
    for k in range(num_shards):
        sidecar = shard_path(output, k, num_shards).with_name(shard_path(output, k, num_shards).name + PROVENANCE_SUFFIX)
        if not sidecar.is_file():
            return False
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        if not record.get("complete"):
            return False
        records.append(record)
    shared = [{k: v for k, v in r.items() if k in ("teacher_sha256", "decoding", "input_sha256", "batch_size", "max_src_len")} for r in records]
    if any(other != shared[0] for other in shared[1:]):
        raise DistillError(f"the shards of {output} were written with different settings; see their {PROVENANCE_SUFFIX} files")
    lines = [shard_path(output, k, num_shards).read_text(encoding="utf-8").splitlines(keepends=True) for k in range(num_shards)]
    total = sum(len(part) for part in lines)
    batch_size = int(records[0]["batch_size"])
    joined, taken = [], [0] * num_shards
    for b, start in enumerate(range(0, total, batch_size)):
        k, size = b % num_shards, min(batch_size, total - start)
        joined.extend(lines[k][taken[k] : taken[k] + size])
        taken[k] += size
    tmp = output.with_name(output.name + ".joining")
    tmp.write_text("".join(joined), encoding="utf-8")
    tmp.replace(output)
    first = records[0]
    summary = {key: value for key, value in first.items() if key not in ("shard", "examples", "written", "started", "finished", "resumed_at", "empty_hypotheses_this_run")}
    summary.update(
        examples=total,
        written=total,
        complete=True,
        joined_from=[shard_path(output, k, num_shards).name for k in range(num_shards)],
        started=min(r["started"] for r in records),
        finished=max(r["finished"] for r in records),
    )
    _write_provenance(output.with_name(output.name + PROVENANCE_SUFFIX), summary)
    return True


def distill(
    teacher: str,
    input: str,
    output: str,
    tokenizer: str | None = None,
    search: Search | None = None,
    steps: int | None = None,
    sampler: Callable[[int], ChainSampler] | None = None,
    length_beam: int | None = None,
    noise_beam: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    max_src_len: int | None = None,
    device: str | None = None,
    shard: int | None = None,
    num_shards: int | None = None,
) -> None:
    """Write distillation data: the teacher's hypothesis for every source of INPUT, as {src, tgt} JSONL.

    Lines are in input order; a stopped run resumes when started again with the same arguments; what produced
    the file is recorded in ``OUTPUT.provenance.json`` (teacher and input sha256, decoding, tokenizer).

    Args:
        teacher: an ``export`` directory or a ``.ckpt`` of the teacher (e.g. the autoregressive baseline).
        input: the training file (``.jsonl`` with ``src``; its targets are replaced by the teacher's).
        output: the distilled ``.jsonl`` to write (appended to when it is a partial run of the same settings).
        tokenizer: tokenizer directory (default: the export's or the run's).
        search: autoregressive teacher: the search, e.g. ``BeamSearch --search.beam_size 4`` (default: the model's).
        steps, sampler, length_beam, noise_beam: diffusion teacher: as for ``generate``.
        batch_size: sources per batch.
        seed: decoding seed (batch ``k`` uses ``seed + its first line's index``, as ``generate``).
        max_src_len: sources are cut to this many tokens (default: the run's ``data.max_src_len``).
        device: ``cpu``, ``cuda`` or ``cuda:N`` (default: cuda when available; ``cuda:LOCAL_RANK`` under torchrun).
        shard, num_shards: this process decodes shard ``shard`` of ``num_shards`` (default: ``RANK`` of
            ``WORLD_SIZE`` under torchrun, else 0 of 1); the last shard to finish joins them into OUTPUT.
    """
    try:
        teacher_path, source, out = Path(teacher), resolve_path(input), Path(output)
        if not teacher_path.exists():
            raise CheckpointError(f"{teacher}: no such export directory or checkpoint file")
        if not source.is_file():
            raise DistillError(f"--input {input}: no such file")
        shard, num_shards = launch_shard(shard, num_shards)
        check_shard(shard, num_shards)
        resolved = device or default_device()
        module = load_pretrained(teacher_path, tokenizer, map_location=resolved)
        decoding, notes = decoding_from_flags(module, steps, sampler, length_beam, noise_beam)
        if search is not None:
            decoding = module.check_decoding(decoding.replace(search=search))
        cut = trained_max_src_len(teacher_path) if max_src_len is None else max_src_len
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"teacher: {teacher} ({type(module).__name__}) on {resolved}", file=sys.stderr)
        print(f"decoding: {module.decoding_settings(decoding)}", file=sys.stderr)
        began = time.perf_counter()
        bar = _Bar()
        try:
            record = distill_file(
                module, teacher_path, source, out, decoding, batch_size, seed, cut, progress=bar, shard=shard, num_shards=num_shards
            )
        finally:
            bar.close()
        wall = time.perf_counter() - began
        resumed = f", resumed after {record['resumed_at'][-1]}" if record.get("resumed_at") else ""
        written_to = shard_path(out, shard, num_shards) if num_shards > 1 else out
        print(
            f"wrote {record['written']} examples to {written_to}{resumed} in {wall:.1f} s "
            f"({record['skipped_empty']} empty pairs skipped, {record['empty_hypotheses_this_run']} empty hypotheses); "
            f"provenance: {out.name}{PROVENANCE_SUFFIX}",
            file=sys.stderr,
        )
        if num_shards > 1:
            state = f"joined the {num_shards} shards into {out}" if record["joined"] else "other shards are still running: the last to finish joins them"
            print(f"shard {shard} of {num_shards} complete; {state}", file=sys.stderr)
    except (DistillError, GenerateError, DecodingError, TokenizerError, CheckpointError, DataError) as err:
        raise SystemExit(f"error: {err}") from None


def launch_shard(shard: int | None, num_shards: int | None) -> tuple[int, int]:
    """``(shard, num_shards)``: as given, else ``RANK`` / ``WORLD_SIZE`` of a torchrun launch, else ``(0, 1)``."""
    if num_shards is None:
        num_shards = int(os.environ.get("WORLD_SIZE", "1"))
        if shard is None:
            shard = int(os.environ.get("RANK", "0"))
    return (0 if shard is None else shard), num_shards


def default_device() -> str:
    """``cuda:LOCAL_RANK`` (torchrun) or ``cuda`` when CUDA is available, else ``cpu``."""
    if not torch.cuda.is_available():
        return "cpu"
    local = os.environ.get("LOCAL_RANK")
    return f"cuda:{local}" if local is not None else "cuda"


class _Bar:
    """A tqdm bar over examples on stderr, created on the first report."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=0, desc="distill", unit="sentence", file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = ["DistillError", "complete_lines", "distill", "distill_file", "join_shards", "shard_blocks", "shard_path"]
