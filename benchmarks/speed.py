"""Sampling speed and BLEU against sampling steps.

For each diffusion family at 5, 10, 20, 50 and 200 sampling steps (and the autoregressive baseline with
greedy and beam search): sentences/s and per-batch latency at batch 1 and batch 64, and BLEU on the first
``--bleu-examples`` test sentences. Uses the checkpoints the translation benchmark left in
``results/runs/<task>/<system>``; systems without one are trained for ``--quick-train-minutes`` first.
Writes ``results/speed.json`` and ``.md``, ``results/bleu_vs_steps.png`` and ``results/sentences_per_s_vs_batch.png``.

    python -m benchmarks.speed
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks import quality
from benchmarks.common import (
    DEFAULT_RESULTS,
    Progress,
    RunFiles,
    attach,
    build_datamodule,
    checkpoint_step,
    decode_batches,
    decoding_fields,
    decoding_for,
    envelope,
    ints,
    load_module,
    parameter_count,
    rel,
    score,
    write_json,
)
from benchmarks.systems import TASKS, System, data_root_default, load_systems, select
from lightning_diffusion.decoding import decode_batch


def variants(system: System, module: Any, steps: list[int]) -> list[tuple[str, dict[str, Any]]]:
    """Decodings to time: a diffusion model's primary decoding at each step count; otherwise each decoding."""
    if module.decoding.sampler is not None:
        primary = next(iter(system.decodings.values()))
        return [(f"{k} steps", {**primary, "steps": k}) for k in steps]
    return list(system.decodings.items())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


def time_decoding(
    module: Any, dm: Any, examples: list[Any], batch_size: int, sentences: int, seed: int, decoding: Any = None
) -> dict[str, Any]:
    """Decode ``ceil(sentences / batch_size)`` batches of ``batch_size`` test sources (cycled when the test set
    is smaller) with :func:`~lightning_diffusion.decoding.decode_batch`; one single-sentence warm-up decode first."""
    n_batches = max(1, math.ceil(sentences / batch_size))
    needed = n_batches * batch_size
    chosen = [examples[i % len(examples)] for i in range(needed)]
    batches = [dm.collate(chosen[i : i + batch_size]) for i in range(0, needed, batch_size)]
    module.eval()
    decode_batch(module, dm.collate(chosen[:1]), decoding, seed)
    latencies, nfe, candidates = [], [], 1
    for batch in batches:
        start = time.perf_counter()
        out = decode_batch(module, batch, decoding, seed)
        latencies.append(time.perf_counter() - start)
        nfe.append(out.nfe or 0)
        candidates = out.candidates
    total = sum(latencies)
    return {
        "batch_size": batch_size,
        "sentences": needed,
        "batches": n_batches,
        "seconds": round(total, 4),
        "sentences_per_second": round(needed / total, 3),
        "latency_ms_mean": round(1000 * total / n_batches, 2),
        "latency_ms_median": round(1000 * statistics.median(latencies), 2),
        "latency_ms_p90": round(1000 * percentile(latencies, 0.9), 2),
        "ms_per_sentence": round(1000 * total / needed, 2),
        "nfe_mean": round(sum(nfe) / len(nfe), 2),
        "candidates": candidates,
    }


def find_or_train(system: System, task_name: str, opts: Any, say: Progress) -> tuple[RunFiles | None, str]:
    runs_dir = Path(opts.runs_dir)
    run = RunFiles.find(runs_dir / task_name / system.name)
    if run is not None:
        return run, "translation benchmark run"
    if opts.quick_train_minutes <= 0:
        return None, "no checkpoint (and --quick-train-minutes 0)"
    root = Path(opts.results_dir) / "runs" / "speed" / task_name / system.name
    train_opts = SimpleNamespace(
        budget_minutes=opts.quick_train_minutes,
        curve_points=0,
        max_steps=opts.max_steps,
        ema_decay=opts.ema_decay,
        train_arg=opts.train_arg,
        reuse_runs=True,
        data_root=opts.data_root,
    )
    record = quality.train(system, TASKS[task_name], root, train_opts, say)
    run = RunFiles.find(root)
    if record.get("returncode", 0) != 0 or run is None:
        return None, f"quick training failed: {record.get('error', '')[-300:]}"
    return run, f"quick-trained {opts.quick_train_minutes:g} min"


def measure_system(system: System, opts: Any, say: Progress) -> dict[str, Any]:
    task = TASKS[opts.task]
    entry: dict[str, Any] = {"system": system.name, "family": system.family}
    reason = system.unavailable(task)
    if reason:
        say(f"{system.name}: skipped ({reason})")
        return {**entry, "status": "skipped", "reason": reason}
    run, origin = find_or_train(system, task.name, opts, say)
    if run is None:
        say(f"{system.name}: skipped ({origin})")
        return {**entry, "status": "skipped", "reason": origin}
    test_file = task.files(Path(opts.data_root))["test"]
    module = load_module(run)
    max_batch = max(opts.batch_sizes)
    dm = build_datamodule(run, test_file, max(max_batch, opts.speed_sentences))
    attach(module, dm)
    examples = dm.datasets["test"].examples
    entry.update(
        status="ok",
        checkpoint=rel(run.checkpoint),
        checkpoint_origin=origin,
        train_steps=checkpoint_step(run.checkpoint),
        parameters=parameter_count(module),
        speed=[],
        bleu_vs_steps=[],
    )
    chosen = variants(system, module, opts.steps)
    for name, overrides in chosen:
        chosen_decoding = decoding_for(module, overrides)
        fields = decoding_fields(module, chosen_decoding)
        for b in opts.batch_sizes:
            row = time_decoding(module, dm, examples, b, opts.speed_sentences, opts.seed, chosen_decoding)
            entry["speed"].append({"decoding": name, "overrides": overrides, **fields, **row})
            say(
                f"{system.name} [{name}] batch {b}: {row['sentences_per_second']} sentences/s, "
                f"median latency {row['latency_ms_median']} ms/batch"
            )
    if opts.bleu_examples > 0:
        dm_bleu = build_datamodule(run, test_file, opts.bleu_examples)
        attach(module, dm_bleu)
        batches = list(dm_bleu.test_dataloader())
        for name, overrides in chosen:
            chosen_decoding = decoding_for(module, overrides)
            fields = decoding_fields(module, chosen_decoding)
            decoded = decode_batches(module, batches, opts.seed, chosen_decoding)
            scores = score(decoded.rows)
            entry["bleu_vs_steps"].append(
                {"decoding": name, "overrides": overrides, **fields, **decoded.summary(), **scores}
            )
            say(
                f"{system.name} [{name}]: BLEU {scores['bleu']:.2f} on {decoded.sentences} sentences "
                f"({decoded.seconds:.1f} s)"
            )
    return entry


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.splitlines()[0])
    translation = [n for n, t in TASKS.items() if t.kind == "translation"]
    parser.add_argument("--task", default="multi30k_en_de", choices=translation)
    parser.add_argument(
        "--steps", type=ints, default=[5, 10, 20, 50, 200], help="sampling steps (comma-separated)"
    )
    parser.add_argument(
        "--batch-sizes", type=ints, default=[1, 64], help="batch sizes in sentences (comma-separated)"
    )
    parser.add_argument(
        "--speed-sentences",
        type=int,
        default=16,
        help="sentences timed per setting: ceil(N / batch) batches (batch 64 -> one batch of 64)",
    )
    parser.add_argument(
        "--bleu-examples", type=int, default=100, help="test examples for BLEU vs steps (0: skip)"
    )
    parser.add_argument("--systems", default=None, help="comma-separated system names (default: all)")
    parser.add_argument(
        "--systems-file", default=None, help="JSON list of systems replacing the built-in list"
    )
    parser.add_argument(
        "--runs-dir", default=str(DEFAULT_RESULTS / "runs"), help="where the translation runs are"
    )
    parser.add_argument(
        "--quick-train-minutes",
        type=float,
        default=2.0,
        help="train a system without a checkpoint in --runs-dir for this long first (0: skip it instead)",
    )
    parser.add_argument("--max-steps", type=int, default=1_000_000, help="step cap of a quick training")
    parser.add_argument(
        "--ema-decay", default="recipe", help="EMA decay of a quick training (see benchmarks.translation)"
    )
    parser.add_argument(
        "--train-arg", action="append", default=[], help="extra CLI argument of a quick training"
    )
    parser.add_argument("--data-root", default=str(data_root_default()))
    parser.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true")
    opts = parser.parse_args(argv)
    systems = select(load_systems(opts.systems_file), opts.systems)
    say = Progress("speed")
    settings = {
        "steps": opts.steps,
        "batch_sizes": opts.batch_sizes,
        "speed_sentences": opts.speed_sentences,
        "bleu_examples": opts.bleu_examples,
        "decode_seed": opts.seed,
        "quick_train_minutes": opts.quick_train_minutes,
    }
    data = envelope("speed", argv, "benchmarks.speed", settings)
    data.update(task=opts.task, checkpoints_from=rel(Path(opts.runs_dir) / opts.task), systems=[])
    started = time.perf_counter()
    for system in systems:
        try:
            data["systems"].append(measure_system(system, opts, say))
        except Exception as err:  # noqa: BLE001 - record, continue with the others
            say(f"{system.name}: FAILED: {type(err).__name__}: {err}")
            data["systems"].append(
                {
                    "system": system.name,
                    "family": system.family,
                    "status": "failed",
                    "error": f"{type(err).__name__}: {err}",
                }
            )
    data["wall_seconds"] = round(time.perf_counter() - started, 1)
    path = write_json(Path(opts.results_dir) / "speed.json", data)
    from benchmarks import report

    report.write_benchmark_outputs(path, plots=not opts.no_plots)
    say(f"wrote {rel(path)} ({data['wall_seconds']:.0f} s)")
    return path


if __name__ == "__main__":
    main()
