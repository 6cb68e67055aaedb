"""Summarization quality against the autoregressive baseline at an equal CPU training budget.

Gigaword (10k-pair training sample; its 500-pair valid sample is the test set) by default, DialogSum
(``--task dialogsum``: long dialogue inputs) as the longer-input option; same protocol as the translation
benchmark, scored with ROUGE-1/2/L (F1 x 100, stemmed; BLEU alongside). Writes
``results/summarization_<task>.json`` and ``.md`` and ``results/rougeL_vs_training_time_<task>.png``.

    python -m benchmarks.summarization --budget-cpu-minutes 3
    python -m benchmarks.summarization --task dialogsum --budget-cpu-minutes 5
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks import quality


def main(argv: Sequence[str] | None = None) -> None:
    quality.main("summarization", argv, "benchmarks.summarization")


if __name__ == "__main__":
    main()
