"""Re-score stored hypotheses: BLEU, ROUGE and every output-health count, unseen words included, from the
``hypotheses_<decoding>.jsonl`` files the quality benchmarks write (rows ``{"source", "hypothesis", "reference"}``),
without decoding again. For results written before a health count existed, or to read old runs side by side.

``--train`` is the task's own training file: its references are the vocabulary of the unseen-word count (never a
distilled file, whose words are the teacher's). Each file's own references are counted the same way (the
``refs unseen`` column), the level its unseen-word count is read against. Prints a markdown table; ``--out`` writes
the JSON.

    python -m benchmarks.rescore benchmarks/results/runs/multi30k_en_de/*/hypotheses_*.jsonl \\
        --train ../shared/data/multi30k_en_de/train.jsonl
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import envelope, rel, score, write_json
from benchmarks.quality import reference_vocabulary, with_health_rates
from benchmarks.report import HEALTH, count_rate
from lightning_diffusion.data.jsonl import DataError, json_object
from lightning_diffusion.evaluation import has_unseen_word

FIELDS = ("source", "hypothesis", "reference")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of one hypotheses file (blank lines skipped); a line that is not a JSON object with string
    ``source``, ``hypothesis`` and ``reference`` fields is an error naming the file and line."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json_object(line, f"{path}:{number}")
            except DataError as err:
                raise SystemExit(str(err)) from None
            missing = [key for key in FIELDS if not isinstance(row.get(key), str)]
            if missing:
                raise SystemExit(f"{path}:{number}: no string field {', '.join(repr(k) for k in missing)}")
            rows.append(row)
    return rows


def label(path: Path) -> str:
    """``<run directory>/<decoding>``: ``seqdiffuseq-distilled/noise beam 10``."""
    decoding = path.stem.removeprefix("hypotheses_")
    return f"{path.parent.name}/{decoding}"


def rescore(paths: Sequence[Path], train: Path) -> list[dict[str, Any]]:
    """One record per file: label, path, BLEU / ROUGE, the output-health counts with their rates, and how many of
    its references hold an unseen word (``references_unseen_words``)."""
    vocabulary = reference_vocabulary(train)
    if vocabulary is None:
        raise SystemExit(f"{train}: training file not found (--train)")
    records = []
    for path in paths:
        rows = read_rows(path)
        if not rows:
            raise SystemExit(f"{path}: no hypotheses")
        scores = with_health_rates(score(rows, vocabulary), len(rows))
        references = sum(1 for row in rows if has_unseen_word(row["reference"], vocabulary))
        records.append(
            {"label": label(path), "file": rel(path), "sentences": len(rows), **scores, "references_unseen_words": references}
        )
    return records


def markdown(records: Sequence[dict[str, Any]]) -> str:
    """The records as a markdown table: BLEU, ROUGE-L, each health count (share), and the references' own
    unseen-word count."""
    head = ["hypotheses", "sentences", "BLEU", "ROUGE-L", *(name for _, name in HEALTH), "refs unseen"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        refs = f"{r['references_unseen_words']:,} ({r['references_unseen_words'] / r['sentences']:.1%})"
        health = (count_rate(r, key) for key, _ in HEALTH)
        cells = [r["label"], f"{r['sentences']:,}", f"{r['bleu']:.2f}", f"{r['rougeL']:.1f}", *health, refs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rescore", description=__doc__.splitlines()[0])
    parser.add_argument("hypotheses", nargs="+", type=Path, help="hypotheses_<decoding>.jsonl files")
    parser.add_argument("--train", type=Path, required=True, help="the task's training file (its references)")
    parser.add_argument("--out", type=Path, help="write the records here as JSON")
    opts = parser.parse_args(argv)
    records = rescore(opts.hypotheses, opts.train)
    print(markdown(records), end="")
    if opts.out is not None:
        data = envelope("rescore", argv, "benchmarks.rescore", {"train_file": rel(opts.train)})
        data["records"] = records
        write_json(opts.out, data)
    return records


if __name__ == "__main__":
    main()
