"""Translation quality against the autoregressive baseline at an equal CPU training budget.

Multi30k En->De and IWSLT14 De->En (training sample, standard test set): each diffusion family
(DiffuSeq, SeqDiffuSeq, Difformer) and the autoregressive Transformer are trained for ``--budget-cpu-minutes``
of process CPU time, then scored with sacreBLEU (with its signature) on the test set. Writes
``results/translation_<task>.json`` and ``.md`` and ``results/bleu_vs_training_time_<task>.png``
(``..._distilled`` with ``--distill``).

    python -m benchmarks.translation --budget-cpu-minutes 3
    python -m benchmarks.translation --preset headline          # 10 CPU-minutes on Multi30k, curve at 2.5 / 5 / 10
    python -m benchmarks.translation --task multi30k_en_de --distill distilled/{task}.jsonl
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks import quality


def main(argv: Sequence[str] | None = None) -> None:
    quality.main("translation", argv, "benchmarks.translation")


if __name__ == "__main__":
    main()
