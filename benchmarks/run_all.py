"""Run every benchmark in order, then write ``benchmarks/RESULTS.md``.

    python -m benchmarks.run_all                     # default: 3 CPU-minutes of training per system
    python -m benchmarks.run_all --budget-cpu-minutes 10 --test-examples 0
    python -m benchmarks.run_all --preset headline   # 10 CPU-minutes, curve at 2.5 / 5 / 10 CPU-minutes

Stages (each a subprocess, ``python -m benchmarks.<stage>``, output streamed): translation (Multi30k En->De,
IWSLT14 De->En), summarization (Gigaword; ``--dialogsum`` adds DialogSum), speed (on the Multi30k checkpoints
the translation stage trained), throughput, attention; then ``benchmarks.report``. A failed stage is reported
and the others still run. ``--<stage>-args "..."`` passes further arguments to one stage.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import (
    BENCH_DIR,
    DEFAULT_RESULTS,
    REPO,
    Progress,
    command_line,
    envelope,
    subprocess_env,
    write_json,
)
from benchmarks.quality import PRESETS, add_budget_arguments, resolve_budget_alias
from benchmarks.systems import data_root_default

STAGES = ("translation", "summarization", "speed", "throughput", "attention")


def stage_commands(opts: argparse.Namespace) -> list[tuple[str, list[str]]]:
    common = ["--results-dir", opts.results_dir]
    data = ["--data-root", opts.data_root]
    systems = ["--systems-file", opts.systems_file] if opts.systems_file else []
    budget = (
        ["--budget-cpu-minutes", str(opts.budget_cpu_minutes)] if opts.budget_cpu_minutes is not None else []
    )
    quality = [
        *(["--preset", opts.preset] if opts.preset else []),
        *budget,
        "--test-examples",
        str(opts.test_examples),
        *data,
        *systems,
        *common,
    ]
    if opts.reuse_runs:
        quality.append("--reuse-runs")
    commands = {
        "translation": ["--task", "multi30k_en_de,iwslt14_de_en", *quality],
        "summarization": ["--task", "gigaword,dialogsum" if opts.dialogsum else "gigaword", *quality],
        "speed": [
            "--task",
            "multi30k_en_de",
            "--runs-dir",
            str(Path(opts.results_dir) / "runs"),
            *data,
            *systems,
            *common,
        ],
        "throughput": ["--task", "multi30k_en_de", *data, *systems, *common],
        "attention": [*common],
    }
    chosen = [s for s in STAGES if s not in opts.skip and (not opts.only or s in opts.only)]
    return [
        (s, [sys.executable, "-m", f"benchmarks.{s}", *commands[s], *shlex.split(getattr(opts, f"{s}_args"))])
        for s in chosen
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.splitlines()[0])
    add_budget_arguments(parser)
    parser.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="preset of the translation and summarization stages ('smoke' or 'headline'; see their --help)",
    )
    parser.add_argument(
        "--test-examples", type=int, default=1000, help="cap on scored test examples (0: all)"
    )
    parser.add_argument("--dialogsum", action="store_true", help="also run the DialogSum summarization task")
    parser.add_argument("--data-root", default=str(data_root_default()))
    parser.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    parser.add_argument("--output", default=str(BENCH_DIR / "RESULTS.md"), help="the RESULTS.md to write")
    parser.add_argument(
        "--systems-file", default=None, help="JSON list of systems replacing the built-in list"
    )
    parser.add_argument("--reuse-runs", action="store_true", help="skip training where a finished run exists")
    parser.add_argument("--skip", default="", help=f"comma-separated stages to skip, of {list(STAGES)}")
    parser.add_argument("--only", default="", help="comma-separated stages to run (default: all)")
    for stage in STAGES:
        parser.add_argument(
            f"--{stage}-args", default="", help=f"further arguments for benchmarks.{stage} (one string)"
        )
    opts = parser.parse_args(argv)
    resolve_budget_alias(opts)
    opts.skip = {s.strip() for s in opts.skip.split(",") if s.strip()}
    opts.only = {s.strip() for s in opts.only.split(",") if s.strip()}
    unknown = (opts.skip | opts.only) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stages {sorted(unknown)}; known: {list(STAGES)}")
    say = Progress("run_all")
    record = envelope(
        "run_all",
        argv,
        "benchmarks.run_all",
        {
            "budget_cpu_minutes": opts.budget_cpu_minutes,
            "preset": opts.preset,
            "test_examples": opts.test_examples,
        },
    )
    record["stages"] = []
    failed = []
    for stage, cmd in stage_commands(opts):
        say(f"stage {stage}: {shlex.join(['python', *cmd[1:]])}")
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env())
        seconds = time.perf_counter() - start
        record["stages"].append(
            {"stage": stage, "returncode": proc.returncode, "wall_seconds": round(seconds, 1)}
        )
        say(
            f"stage {stage}: {'done' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'} in {seconds / 60:.1f} min"
        )
        if proc.returncode != 0:
            failed.append(stage)
    record["wall_seconds"] = round(say.elapsed, 1)
    record["command"] = command_line(argv, "benchmarks.run_all")
    write_json(Path(opts.results_dir) / "run_all.json", record)
    from benchmarks import report

    path = report.write_results_md(Path(opts.results_dir), Path(opts.output))
    say(
        f"wrote {path} (total {say.elapsed / 60:.1f} min){'; failed stages: ' + ', '.join(failed) if failed else ''}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
