"""Reading source/target pairs from JSONL (optionally gzipped) or plain-text files.

Every problem is reported as a :class:`DataError` naming the file, the 1-based line and the field;
nothing is dropped silently (skipped lines are counted in :class:`ReadStats`).
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

BUILTIN_PREFIX = "builtin:"
RESOURCES_DIR = Path(__file__).resolve().parent.parent / "resources"

EmptyPolicy = Literal["skip", "keep", "error"]


class DataError(ValueError):
    """A problem with an input data file; the message names the file, the line and the field."""


@dataclass
class Example:
    """One source/target pair as read from a file.

    Attributes:
        src: the raw source text.
        tgt: the raw target text, or None when the file gives none (plain text, or a JSONL line without one).
        line: 1-based line number in the file.
    """

    src: str
    tgt: str | None
    line: int


@dataclass
class ReadStats:
    """Counts from reading one file.

    Attributes:
        lines: physical lines in the file.
        examples: examples returned.
        blank_lines: blank lines (skipped in JSONL; kept as empty sources in plain text).
        empty_skipped: examples with an empty/whitespace-only source or target that were skipped.
        empty_kept: such examples that were kept.
        empty_src: examples (skipped or kept) whose source was empty.
        empty_tgt: examples (skipped or kept) whose target was empty.
        plain_text: whether the file was read as plain text.
    """

    lines: int = 0
    examples: int = 0
    blank_lines: int = 0
    empty_skipped: int = 0
    empty_kept: int = 0
    empty_src: int = 0
    empty_tgt: int = 0
    plain_text: bool = False

    def summary(self, path: str | Path) -> str:
        """One line for humans, e.g. ``train.jsonl: 20000 examples (2 with an empty target skipped)``."""
        if self.empty_src and self.empty_tgt:
            what = "source or target"
        elif self.empty_src:
            what = "source"
        else:
            what = "target"
        notes = []
        if self.empty_skipped:
            notes.append(f"{self.empty_skipped} with an empty {what} skipped")
        if self.empty_kept:
            notes.append(f"{self.empty_kept} with an empty {what} kept")
        if self.blank_lines and not self.plain_text:
            notes.append(f"{self.blank_lines} blank line{'s' if self.blank_lines != 1 else ''} skipped")
        text = f"{path}: {self.examples} example{'s' if self.examples != 1 else ''}"
        return f"{text} ({', '.join(notes)})" if notes else text


def resolve_path(path: str | Path) -> Path:
    """Turn a user path into a filesystem path.

    ``builtin:<relative path>`` names a file bundled under ``lightning_diffusion/resources/``
    (e.g. ``builtin:tatoeba_en_es/train.jsonl``); anything else is a normal path (``~`` is expanded).
    """
    text = str(path)
    if text.startswith(BUILTIN_PREFIX):
        relative = text[len(BUILTIN_PREFIX) :].lstrip("/")
        return RESOURCES_DIR / relative
    return Path(text).expanduser()


def _format(path: Path) -> tuple[str, bool]:
    """``(kind, gzipped)`` from the file name: kind is ``"jsonl"`` or ``"txt"``."""
    name = path.name.lower()
    gzipped = name.endswith(".gz")
    if gzipped:
        name = name[: -len(".gz")]
    if name.endswith(".txt"):
        return "txt", gzipped
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl", gzipped
    raise DataError(f"{path}: unsupported file type (expected .jsonl, .jsonl.gz or .txt)")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short_json(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decoded_lines(path: Path, name: str, gzipped: bool) -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, text without the line ending)``; a final newline adds no line."""
    try:
        handle = gzip.open(path, "rb") if gzipped else open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a directory, expected a file") from None
    with handle:
        number = 0
        try:
            for number, raw in enumerate(handle, start=1):
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]  # columns count from after the byte-order mark
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(
                        f"{name}:{number}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})"
                    ) from None
                yield number, text.rstrip("\n").rstrip("\r")
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{name}:{number + 1}: cannot read gzip data ({err})") from None


def json_object(text: str, where: str) -> dict[str, Any]:
    """One JSONL line parsed as an object; anything else is a :class:`DataError` that starts with ``where``
    (``file:line``)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {_type_name(record)}")
    return record


def _is_empty(text: str | None) -> bool:
    return text is not None and not text.strip()


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(value: str, where: str) -> None:
    """Raise if ``value`` holds an unpaired surrogate (a JSON ``\\ud800``-style escape): it is not Unicode
    text, the tokenizer cannot encode it and the prediction file could not be written as UTF-8."""
    match = _SURROGATE.search(value)
    if match is not None:
        raise DataError(
            f"{where}: unpaired surrogate \\u{ord(match.group()):04x} at character {match.start() + 1} "
            "(a JSON \\u escape that is not valid Unicode text)"
        )


def _duplicate_fields(text: str, keys: Sequence[str]) -> list[str]:
    """Which of ``keys`` occur more than once in the JSON object ``text`` (``json.loads`` keeps the last value
    silently). Only lines that name a key twice are parsed again (keys spelled with ``\\u`` escapes are not
    seen by this pre-check)."""
    suspects = [key for key in keys if text.count(json.dumps(key, ensure_ascii=False)) > 1]
    if not suspects:
        return []
    pairs = json.loads(text, object_pairs_hook=lambda items: items)
    names = [key for key, _ in pairs] if isinstance(pairs, list) else []
    return [key for key in suspects if names.count(key) > 1]


def read_examples(
    path: str | Path,
    *,
    src_key: str = "src",
    tgt_keys: Sequence[str] = ("tgt", "trg"),
    require_target: bool,
    empty: EmptyPolicy = "skip",
) -> tuple[list[Example], ReadStats]:
    """Read examples from ``.jsonl``, ``.jsonl.gz`` or ``.txt`` (``builtin:`` paths allowed).

    JSONL: one object per line with a string source under ``src_key`` and a string target under the first
    of ``tgt_keys`` present; blank lines are skipped and counted; extra fields are ignored. Without
    ``require_target`` a line with no target gets ``tgt=None``. A source or target field given twice in one
    object, or text with an unpaired surrogate escape (``"\\ud800"``), is an error (never a silent pick).
    Plain text: one source per line, no targets; blank lines are kept as empty sources so outputs stay
    aligned with input lines (so ``empty="skip"`` keeps them too; ``"error"`` still raises).

    ``empty`` says what to do with an example whose source or target is empty or whitespace-only:
    ``"skip"`` drops and counts it, ``"keep"`` keeps it, ``"error"`` raises :class:`DataError`.
    """
    name = str(path)
    file = resolve_path(path)
    kind, gzipped = _format(file)
    if kind == "txt" and require_target:
        raise DataError(
            f"{name}: plain-text files have sources only, but this split needs targets (use JSONL)"
        )
    if empty not in ("skip", "keep", "error"):
        raise ValueError(f"empty must be 'skip', 'keep' or 'error', got {empty!r}")
    accepted = ", ".join(repr(key) for key in tgt_keys)
    stats = ReadStats(plain_text=kind == "txt")
    examples: list[Example] = []
    for number, text in _decoded_lines(file, name, gzipped):
        stats.lines = number
        if not text.strip():
            stats.blank_lines += 1
            if kind == "jsonl":
                continue
        tgt_field = tgt_keys[0]
        if kind == "txt":
            src, tgt = text, None
        else:
            record = json_object(text, f"{name}:{number}")
            duplicates = _duplicate_fields(text, [src_key, *tgt_keys])
            if duplicates:
                raise DataError(
                    f"{name}:{number}: field {duplicates[0]!r} is given more than once (only one value can be used)"
                )
            if src_key not in record:
                raise DataError(f"{name}:{number}: missing field {src_key!r}")
            src = record[src_key]
            if not isinstance(src, str):
                raise DataError(
                    f"{name}:{number}: field {src_key!r}: expected a string, "
                    f"got {_type_name(src)} ({_short_json(src)})"
                )
            _check_text(src, f"{name}:{number}: field {src_key!r}")
            present = [key for key in tgt_keys if key in record]
            if not present:
                if require_target:
                    raise DataError(
                        f"{name}:{number}: missing field {tgt_field!r} (accepted names: {accepted})"
                    )
                tgt = None
            else:
                tgt_field = present[0]
                tgt = record[tgt_field]
                if not isinstance(tgt, str):
                    raise DataError(
                        f"{name}:{number}: field {tgt_field!r}: expected a string, "
                        f"got {_type_name(tgt)} ({_short_json(tgt)})"
                    )
                _check_text(tgt, f"{name}:{number}: field {tgt_field!r}")
        empty_src, empty_tgt = _is_empty(src), _is_empty(tgt)
        if empty_src or empty_tgt:
            field = src_key if empty_src else tgt_field
            if empty == "error":
                raise DataError(
                    f"{name}:{number}: field {field!r}: empty or whitespace-only "
                    "(empty_examples='error'; use 'skip' to drop such examples or 'keep' to keep them)"
                )
            stats.empty_src += int(empty_src)
            stats.empty_tgt += int(empty_tgt)
            if empty == "skip" and kind == "jsonl":
                stats.empty_skipped += 1
                continue
            stats.empty_kept += 1
        examples.append(Example(src=src, tgt=tgt, line=number))
    stats.examples = len(examples)
    if not examples:
        if stats.lines == stats.blank_lines:
            raise DataError(f"{name}: file is empty (no examples)")
        raise DataError(f"{name}: no examples left ({stats.summary(name)})")
    return examples, stats


__all__ = ["DataError", "Example", "ReadStats", "json_object", "read_examples", "resolve_path"]


_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def jsonl_line(record: dict[str, Any]) -> str:
    """One JSONL line (with the newline): UTF-8 text kept readable, but U+2028, U+2029 and U+0085 escaped, since
    readers that split on Unicode line breaks (``str.splitlines``, many editors) would cut the record there."""
    text = json.dumps(record, ensure_ascii=False)
    for char, escaped in _LINE_BREAKS.items():
        text = text.replace(char, escaped)
    return text + "\n"
