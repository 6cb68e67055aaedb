"""Quality at equal CPU training time: train every system for the same wall-clock budget through the
``lightning-diffusion fit`` command (one subprocess each), then decode the test set in-process and score it.

Used by ``benchmarks.translation`` (sacreBLEU) and ``benchmarks.summarization`` (ROUGE); see their ``--help``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import (
    DEFAULT_RESULTS,
    REPO,
    Progress,
    RunFiles,
    attach,
    build_datamodule,
    checkpoint_step,
    decode_batches,
    decoding_fields,
    decoding_for,
    envelope,
    format_max_time,
    load_module,
    parameter_count,
    read_json,
    rel,
    score,
    subprocess_env,
    write_json,
    write_rows,
)
from benchmarks.systems import TASKS, System, Task, data_root_default, load_systems, select

# Callbacks whose ``decay`` --ema-decay sets: Lightning's EMA and the library's EMA with decay warm-up.
EMA_CLASSES = ("EMAWeightAveraging", "lightning_diffusion.callbacks.EMA")


# ---------------------------------------------------------------------------------------------- arguments
def add_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    tasks = [name for name, task in TASKS.items() if task.kind == kind]
    default = "multi30k_en_de,iwslt14_de_en" if kind == "translation" else "gigaword"
    parser.add_argument(
        "--task", default=default, help=f"comma-separated tasks of {tasks} (default {default})"
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=3.0,
        help="training wall-clock budget per system, minutes (trainer.max_time; data loading and setup not counted)",
    )
    parser.add_argument(
        "--test-examples",
        type=int,
        default=1000,
        help="score the first N test examples (input order; 0: all); the count used and the total are reported",
    )
    parser.add_argument(
        "--curve-points",
        type=int,
        default=2,
        help="snapshots saved during training at equal training-time intervals, for the quality-vs-training-time "
        "curve (plus the final checkpoint); 0 disables",
    )
    parser.add_argument(
        "--curve-examples", type=int, default=200, help="test examples scored at each curve point"
    )
    parser.add_argument("--systems", default=None, help="comma-separated system names (default: all)")
    parser.add_argument(
        "--systems-file", default=None, help="JSON list of systems replacing the built-in list"
    )
    parser.add_argument(
        "--data-root", default=str(data_root_default()), help="directory holding the datasets"
    )
    parser.add_argument("--results-dir", default=str(DEFAULT_RESULTS), help="where JSON, tables and plots go")
    parser.add_argument(
        "--max-steps", type=int, default=1_000_000, help="also stop training after this many steps"
    )
    parser.add_argument(
        "--ema-decay",
        default="recipe",
        help="'recipe' keeps the recipes' EMA callback as it is (lightning_diffusion.callbacks.EMA, decay 0.9999 "
        "with a warm-up); a number sets the decay of the recipes' EMA callback",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="decoding noise seed (per batch: seed + first index)"
    )
    parser.add_argument(
        "--train-arg",
        action="append",
        default=[],
        help="extra CLI argument for every training run (repeat; use the --train-arg=--x form for values with dashes)",
    )
    parser.add_argument("--reuse-runs", action="store_true", help="skip training where a finished run exists")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")


def parse_tasks(value: str, kind: str) -> list[Task]:
    tasks = []
    for name in [n.strip() for n in value.split(",") if n.strip()]:
        if name not in TASKS or TASKS[name].kind != kind:
            known = [n for n, t in TASKS.items() if t.kind == kind]
            raise SystemExit(f"unknown {kind} task {name!r}; known: {known}")
        tasks.append(TASKS[name])
    return tasks


# ---------------------------------------------------------------------------------------------- training
def _load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def merged_callbacks(files: Sequence[Path]) -> list[Any]:
    """``trainer.callbacks`` as the CLI resolves it from ``-c`` files in order (a later list replaces)."""
    callbacks: list[Any] = []
    for path in files:
        trainer = _load_yaml(path).get("trainer") or {}
        if "callbacks" in trainer:
            value = trainer["callbacks"] or []
            callbacks = list(value) if isinstance(value, list) else [value]
    return callbacks


def benchmark_overlay(
    files: Sequence[Path], ema_decay: str, snapshot_every_s: float | None, max_snapshots: int
) -> dict:
    """The overlay each training run gets last: the recipe's callbacks (EMA decay adjusted) plus TrainingClock."""
    callbacks = []
    for cb in merged_callbacks(files):
        cb = json.loads(json.dumps(cb))  # deep copy
        if (
            isinstance(cb, dict)
            and str(cb.get("class_path", "")).endswith(EMA_CLASSES)
            and ema_decay != "recipe"
        ):
            cb.setdefault("init_args", {})["decay"] = float(ema_decay)
        callbacks.append(cb)
    callbacks.append(
        {
            "class_path": "benchmarks.callbacks.TrainingClock",
            "init_args": {"snapshot_every_s": snapshot_every_s, "max_snapshots": max_snapshots},
        }
    )
    return {"trainer": {"callbacks": callbacks}}


def train_command(
    system: System, task: Task, recipe: Path, overlay: Path, files: dict[str, Path], run_root: Path, opts: Any
) -> list[str]:
    data = {key: rel(path) for key, path in files.items()}  # the command runs from the repository root
    return [
        sys.executable,
        "-m",
        "lightning_diffusion.cli",
        "fit",
        "-c",
        rel(recipe),
        *[arg for o in system.overlays for arg in ("-c", o)],
        "-c",
        rel(overlay),
        "--data.train_file",
        data["train"],
        "--data.val_file",
        data["valid"],
        "--data.test_file",
        data["test"],
        "--data.predict_file",
        data["test"],
        *system.args,
        *task.args,
        *task.system_args.get(system.name, ()),
        *opts.train_arg,
        "--trainer.max_time",
        format_max_time(opts.budget_minutes),
        "--trainer.max_steps",
        str(opts.max_steps),
        "--trainer.val_check_interval",
        "1000000000",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        rel(run_root),
    ]


def read_clock(run: RunFiles) -> dict[str, Any]:
    path = run.log_dir / "training_clock.json"
    return read_json(path) if path.is_file() else {}


def train(system: System, task: Task, run_root: Path, opts: Any, say: Progress) -> dict[str, Any]:
    """Train one system (or reuse a finished run); returns the ``train`` record."""
    recipe, fallback = system.resolve_recipe(task)
    assert recipe is not None
    existing = RunFiles.find(run_root) if opts.reuse_runs else None
    if existing is not None and read_clock(existing).get("finished"):
        say(f"{task.name}/{system.name}: reusing {rel(existing.log_dir)}")
        record = (
            read_json(run_root / "train_record.json") if (run_root / "train_record.json").is_file() else {}
        )
        record["reused"] = True
        return record
    if run_root.exists():
        shutil.rmtree(run_root)
    run_root.mkdir(parents=True)
    overlay_path = run_root / "benchmark_overlay.yaml"
    snapshot_every = opts.budget_minutes * 60 / (opts.curve_points + 1) if opts.curve_points > 0 else None
    overlay = benchmark_overlay(
        [recipe, *(REPO / o for o in system.overlays)],
        opts.ema_decay,
        snapshot_every,
        max(opts.curve_points, 0),
    )
    overlay_path.write_text(yaml.safe_dump(overlay, sort_keys=False), encoding="utf-8")
    cmd = train_command(system, task, recipe, overlay_path, task.files(Path(opts.data_root)), run_root, opts)
    log_path = run_root / "train.log"
    say(f"{task.name}/{system.name}: training for {opts.budget_minutes:g} min (log {rel(log_path)})")
    start = time.perf_counter()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log_path.open("w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n\n")
        log.flush()
        proc = subprocess.run(
            cmd,
            cwd=REPO,
            env=subprocess_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=opts.budget_minutes * 120 + 1800,
        )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    record: dict[str, Any] = {
        "budget_minutes": opts.budget_minutes,
        "recipe": rel(recipe),
        "recipe_fallback": fallback,
        "overlays": list(system.overlays),
        "args": [*system.args, *task.args, *task.system_args.get(system.name, ()), *opts.train_arg],
        "ema_decay": opts.ema_decay,
        "command": "python " + shlex.join(cmd[1:]),
        "log": rel(log_path),
        "returncode": proc.returncode,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
    }
    run = RunFiles.find(run_root)
    if proc.returncode != 0 or run is None:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
        record["error"] = "\n".join(tail)
        say(f"{task.name}/{system.name}: training FAILED (exit {proc.returncode}); see {rel(log_path)}")
    else:
        clock = read_clock(run)
        record.update(
            steps=checkpoint_step(run.checkpoint),
            train_seconds=clock.get("train_seconds"),
            snapshot_save_seconds=clock.get("snapshot_save_seconds"),
            log_dir=rel(run.log_dir),
        )
        say(
            f"{task.name}/{system.name}: trained {record['steps']} steps in {record['train_seconds']} s "
            f"of training ({wall:.0f} s wall with startup)"
        )
    write_json(run_root / "train_record.json", record)
    return record


# ---------------------------------------------------------------------------------------------- evaluation
def count_examples(path: Path) -> int:
    from lightning_diffusion.data.jsonl import read_examples

    examples, _ = read_examples(
        str(path), src_key="src", tgt_keys=("tgt", "trg"), require_target=True, empty="keep"
    )
    return len(examples)


def evaluate(system: System, task: Task, run_root: Path, opts: Any, say: Progress) -> dict[str, Any]:
    """Decode the test set with each decoding of the system; score; the quality-vs-training-time curve."""
    run = RunFiles.find(run_root)
    assert run is not None
    test_file = task.files(Path(opts.data_root))["test"]
    module = load_module(run)
    dm = build_datamodule(run, test_file, opts.test_examples if opts.test_examples > 0 else None)
    attach(module, dm)
    batches = list(dm.test_dataloader())
    out: dict[str, Any] = {
        "parameters": parameter_count(module),
        "checkpoint": rel(run.checkpoint),
        "evaluations": [],
    }
    primary_rows: list[dict[str, Any]] = []
    for i, (name, overrides) in enumerate(system.decodings.items()):
        chosen = decoding_for(module, overrides)
        fields = decoding_fields(module, chosen)
        say(f"{task.name}/{system.name}: decoding {len(dm.datasets['test'])} test examples ({name}: {fields['settings']})")
        decoded = decode_batches(module, batches, opts.seed, chosen)
        scores = score(decoded.rows)
        hyp_path = write_rows(run_root / f"hypotheses_{name}.jsonl", decoded.rows)
        summary = decoded.summary()
        out["evaluations"].append(
            {
                "decoding": name,
                "overrides": overrides,
                **fields,
                **summary,
                "calls_per_sentence": (summary["nfe_mean"] or 0) * summary["candidates"],
                **scores,
                "hypotheses_file": rel(hyp_path),
            }
        )
        say(
            f"{task.name}/{system.name}: [{name}] BLEU {scores['bleu']:.2f}, ROUGE-1/2/L {scores['rouge1']:.1f}/"
            f"{scores['rouge2']:.1f}/{scores['rougeL']:.1f} on {decoded.sentences} sentences "
            f"({summary['decode_seconds']:.1f} s, {summary['sentences_per_second']} sentences/s)"
        )
        if i == 0:
            primary_rows = decoded.rows
    out["curve"] = curve(system, task, run, run_root, module, primary_rows, opts, say)
    return out


def curve(
    system: System,
    task: Task,
    run: RunFiles,
    run_root: Path,
    final_module: Any,
    final_rows: list[dict[str, Any]],
    opts: Any,
    say: Progress,
) -> list[dict[str, Any]]:
    """Quality of the primary decoding on the first ``curve_examples`` test examples at each snapshot and at
    the end (the final point re-scores the final decode's hypotheses of those examples)."""
    if opts.curve_points <= 0 or opts.curve_examples <= 0:
        return []
    primary = next(iter(system.decodings.values()))
    clock = read_clock(run)
    points = []
    snapshots = clock.get("snapshots", [])
    dm = None
    for snap in snapshots:
        path = run.log_dir / "snapshots" / snap["path"]
        if not path.is_file():
            continue
        if dm is None:
            dm = build_datamodule(run, task.files(Path(opts.data_root))["test"], opts.curve_examples)
            batches = list(dm.test_dataloader())
        module = load_module(run, path)
        attach(module, dm)
        decoded = decode_batches(module, batches, opts.seed, decoding_for(module, primary))
        points.append(
            {
                "step": snap["step"],
                "train_seconds": snap["train_seconds"],
                "sentences": decoded.sentences,
                "source": f"snapshot {snap['path']}",
                **score(decoded.rows),
            }
        )
        say(
            f"{task.name}/{system.name}: curve point at {snap['train_seconds']:.0f} s (step {snap['step']}): "
            f"BLEU {points[-1]['bleu']:.2f}, ROUGE-L {points[-1]['rougeL']:.1f}"
        )
    subset = [row for row in final_rows if row["index"] < opts.curve_examples]
    if subset:
        points.append(
            {
                "step": final_module.checkpoint_step,
                "train_seconds": clock.get("train_seconds"),
                "sentences": len(subset),
                "source": "final checkpoint",
                **score(subset),
            }
        )
    return points


def run_task(task: Task, systems: list[System], opts: Any, say: Progress) -> dict[str, Any]:
    files = task.files(Path(opts.data_root))
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"{task.name}: data files not found: {missing} (set --data-root)")
    total = count_examples(files["test"])
    used = min(total, opts.test_examples) if opts.test_examples > 0 else total
    result: dict[str, Any] = {
        "task": task.name,
        "kind": task.kind,
        "metric": task.metric,
        "note": task.note,
        "data": {
            "train_file": rel(files["train"]),
            "test_file": rel(files["test"]),
            "test_examples": used,
            "test_examples_total": total,
            "test_selection": "all" if used == total else f"first {used} of {total} in file order",
        },
        "systems": [],
    }
    for system in systems:
        entry: dict[str, Any] = {
            "system": system.name,
            "family": system.family,
            "definition": system.to_dict(),
        }
        result["systems"].append(entry)
        reason = system.unavailable(task)
        if reason:
            entry.update(status="skipped", reason=reason)
            say(f"{task.name}/{system.name}: skipped ({reason})")
            continue
        run_root = Path(opts.results_dir) / "runs" / task.name / system.name
        entry["train"] = train(system, task, run_root, opts, say)
        if entry["train"].get("returncode", 0) != 0 or RunFiles.find(run_root) is None:
            entry["status"] = "failed"
            continue
        try:
            entry.update(evaluate(system, task, run_root, opts, say))
            entry["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - record and go on with the other systems
            entry.update(status="failed", error=f"evaluation: {type(err).__name__}: {err}")
            say(f"{task.name}/{system.name}: evaluation FAILED: {type(err).__name__}: {err}")
    return result


def main(kind: str, argv: Sequence[str] | None, module_name: str) -> list[Path]:
    parser = argparse.ArgumentParser(
        prog=f"python -m {module_name}",
        description=(
            f"{kind.capitalize()} quality at an equal CPU training budget: every system is trained for "
            "--budget-minutes with `lightning-diffusion fit` and scored on the test set."
        ),
    )
    add_arguments(parser, kind)
    opts = parser.parse_args(argv)
    tasks = parse_tasks(opts.task, kind)
    systems = select(load_systems(opts.systems_file), opts.systems)
    say = Progress(kind)
    written = []
    for task in tasks:
        settings = {
            "budget_minutes": opts.budget_minutes,
            "max_steps": opts.max_steps,
            "test_examples_requested": opts.test_examples,
            "curve_points": opts.curve_points,
            "curve_examples": opts.curve_examples,
            "ema_decay": opts.ema_decay,
            "decode_seed": opts.seed,
            "train_args": opts.train_arg,
            "validation_during_training": False,
        }
        data = envelope(kind, argv, module_name, settings)
        started = time.perf_counter()
        say(f"{task.name}: {len(systems)} systems, {opts.budget_minutes:g} min training each")
        data.update(run_task(task, systems, opts, say))
        data["wall_seconds"] = round(time.perf_counter() - started, 1)
        path = write_json(Path(opts.results_dir) / f"{kind}_{task.name}.json", data)
        from benchmarks import report

        report.write_benchmark_outputs(path, plots=not opts.no_plots)
        say(f"{task.name}: wrote {rel(path)} ({data['wall_seconds']:.0f} s)")
        written.append(path)
    return written
