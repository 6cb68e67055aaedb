"""Re-score stored hypotheses: BLEU, ROUGE and every output-health count, unseen words included, from the
``hypotheses_<decoding>.jsonl`` files the quality benchmarks write (rows ``{"source", "hypothesis", "reference"}``),
without decoding again. For results written before a health count existed, or to read old runs side by side.

``--train`` is the task's own training file: its references are the vocabulary of the unseen-word count (never a
distilled file, whose words are the teacher's). ``--test`` adds a row for the test references themselves, the level
the unseen-word count is read against. Prints a markdown table; ``--out`` writes the JSON.

    python -m benchmarks.rescore runs/multi30k_en_de/*/hypotheses_*.jsonl \\
        --train ../shared/data/multi30k_en_de/train.jsonl --test ../shared/data/multi30k_en_de/test.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import envelope, rel, score, write_json
from benchmarks.quality import reference_vocabulary, references_unseen_words, with_health_rates
from benchmarks.report import HEALTH, count_rate


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of one hypotheses file; a row without a hypothesis or a reference is an error naming its line."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [key for key in ("hypothesis", "reference") if not isinstance(row.get(key), str)]
            if missing:
                raise SystemExit(f"{path}:{number}: no string field {', '.join(repr(k) for k in missing)}")
            row.setdefault("source", "")
            rows.append(row)
    return rows


def label(path: Path) -> str:
    """``<run directory>/<decoding>``: ``seqdiffuseq-distilled/noise beam 10``."""
    decoding = path.stem.removeprefix("hypotheses_")
    return f"{path.parent.name}/{decoding}"


def rescore(paths: Sequence[Path], train: Path) -> list[dict[str, Any]]:
    """One record per file: its label, path, BLEU / ROUGE and the output-health counts with their rates."""
    vocabulary = reference_vocabulary(train)
    if vocabulary is None:
        raise SystemExit(f"{train}: training file not found (--train)")
    records = []
    for path in paths:
        rows = read_rows(path)
        scores = with_health_rates(score(rows, vocabulary), len(rows))
        records.append({"label": label(path), "file": rel(path), "sentences": len(rows), **scores})
    return records


def markdown(records: Sequence[dict[str, Any]], references: tuple[int, int] | None) -> str:
    head = ["hypotheses", "sentences", "BLEU", *(name for _, name in HEALTH)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        cells = [r["label"], f"{r['sentences']:,}", f"{r['bleu']:.2f}", *(count_rate(r, key) for key, _ in HEALTH)]
        lines.append("| " + " | ".join(cells) + " |")
    if references is not None:
        count, total = references
        lines.append(
            f"\nTest references holding a word the training references never do: {count:,} of {total:,} "
            f"({count / total:.1%})."
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rescore", description=__doc__.splitlines()[0])
    parser.add_argument("hypotheses", nargs="+", type=Path, help="hypotheses_<decoding>.jsonl files")
    parser.add_argument("--train", type=Path, required=True, help="the task's training file (its references)")
    parser.add_argument("--test", type=Path, help="the test file scored, for the references' own unseen-word count")
    parser.add_argument("--out", type=Path, help="write the records here as JSON")
    opts = parser.parse_args(argv)
    records = rescore(opts.hypotheses, opts.train)
    references = None
    if opts.test is not None:
        total = max(r["sentences"] for r in records)
        count = references_unseen_words(opts.test, opts.train, total)
        references = None if count is None else (count, total)
    print(markdown(records, references), end="")
    if opts.out is not None:
        settings = {"train_file": rel(opts.train), "test_file": rel(opts.test) if opts.test else None}
        data = envelope("rescore", argv, "benchmarks.rescore", settings)
        data["test_references_unseen_words"] = None if references is None else references[0]
        data["records"] = records
        write_json(opts.out, data)
    return records


if __name__ == "__main__":
    main()
