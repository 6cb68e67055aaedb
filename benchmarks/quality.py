"""Quality at equal CPU training time: train every system for the same budget of process CPU seconds through the
``lightning-diffusion fit`` command (one subprocess each; :class:`benchmarks.callbacks.TrainingClock` counts the
training process's CPU time and stops it), then decode the test set in-process and score it.

Used by ``benchmarks.translation`` (sacreBLEU) and ``benchmarks.summarization`` (ROUGE); see their ``--help``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

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
DEFAULT_BUDGET_CPU_MINUTES = 3.0
DEFAULT_CURVE_POINTS = 2
DEFAULT_MAX_TIME_FACTOR = 4.0

# Named settings (``--preset``); an option given on the command line wins over its preset value.
PRESETS: dict[str, dict[str, Any]] = {
    # The quick default: 3 CPU-minutes per system, two snapshots (smoke runs, run_all).
    "smoke": {},
    # The headline comparison: 10 CPU-minutes per system, curve points at 2.5, 5 (snapshots) and 10 (final)
    # CPU-minutes; translation on Multi30k unless --task says otherwise.
    "headline": {"budget_cpu_minutes": 10.0, "curve_at": "2.5,5", "task": {"translation": "multi30k_en_de"}},
}


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """``--budget-cpu-minutes`` and its deprecated alias ``--budget-minutes`` (quality benchmarks and ``run_all``)."""
    parser.add_argument(
        "--budget-cpu-minutes",
        type=float,
        default=None,
        metavar="M",
        help=f"training budget per system in CPU-minutes of the training process (time.process_time: all its "
        f"threads), counted from the first training batch (tokenizer, data loading, model setup and snapshot "
        f"saving not counted); default {DEFAULT_BUDGET_CPU_MINUTES:g} or the preset's",
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        dest="budget_minutes_deprecated",
        metavar="M",
        help="deprecated alias of --budget-cpu-minutes (the budget is CPU time now, not wall-clock time)",
    )


def resolve_budget_alias(opts: argparse.Namespace) -> None:
    """Move a deprecated ``--budget-minutes`` into ``budget_cpu_minutes`` (warning on stderr; both given and
    different is an error)."""
    if opts.budget_minutes_deprecated is None:
        return
    if opts.budget_cpu_minutes is not None and opts.budget_cpu_minutes != opts.budget_minutes_deprecated:
        raise SystemExit("--budget-minutes is a deprecated alias of --budget-cpu-minutes: give one of them")
    print(
        "warning: --budget-minutes is deprecated; it now means CPU-minutes of the training process, as "
        "--budget-cpu-minutes (use that)",
        file=sys.stderr,
        flush=True,
    )
    opts.budget_cpu_minutes = opts.budget_minutes_deprecated


def add_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    tasks = [name for name, task in TASKS.items() if task.kind == kind]
    default = "multi30k_en_de,iwslt14_de_en" if kind == "translation" else "gigaword"
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="smoke",
        help="named settings: 'smoke' (default: --budget-cpu-minutes 3, 2 curve points) or 'headline' "
        "(--budget-cpu-minutes 10, curve at 2.5 and 5 CPU-minutes plus the final 10"
        + (", --task multi30k_en_de" if kind == "translation" else "")
        + "); options given explicitly win",
    )
    parser.add_argument("--task", default=None, help=f"comma-separated tasks of {tasks} (default {default})")
    add_budget_arguments(parser)
    parser.add_argument(
        "--max-time-factor",
        type=float,
        default=DEFAULT_MAX_TIME_FACTOR,
        help="wall-clock safety cap: trainer.max_time = this x the CPU budget (a run the cap stops before its "
        f"CPU budget is spent is marked in the results); default {DEFAULT_MAX_TIME_FACTOR:g}",
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
        default=None,
        help="snapshots saved during training at equal fractions of the CPU budget, for the quality-vs-training-"
        f"time curve (plus the final checkpoint); 0 disables; default {DEFAULT_CURVE_POINTS}",
    )
    parser.add_argument(
        "--curve-at",
        default=None,
        help="comma-separated CPU-minutes at which to save snapshots instead of --curve-points, e.g. '2.5,5' "
        "(each below the budget; the final checkpoint is the last point)",
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
    parser.add_argument(
        "--distill",
        default=None,
        metavar="FILE",
        help="train every diffusion family on this distilled training file (from `lightning-diffusion distill`) "
        "instead of the task's training file; '{task}' in the path is replaced by the task name (needed with "
        "several tasks). The autoregressive baseline keeps the original data unless --distill-baseline. Results "
        "go to <kind>_<task>_distilled.json, runs to runs/<task>/<system>-distilled",
    )
    parser.add_argument(
        "--distill-baseline",
        action="store_true",
        help="with --distill, train the autoregressive baseline on the distilled file too",
    )
    parser.add_argument("--reuse-runs", action="store_true", help="skip training where a finished run exists")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")


def parse_curve_at(value: str) -> list[float]:
    try:
        points = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--curve-at {value!r}: expected comma-separated CPU-minutes, e.g. 2.5,5") from None
    return points


def resolve_options(opts: argparse.Namespace, kind: str) -> argparse.Namespace:
    """Fill the options left unset from ``--preset`` and then from the defaults; check them. Sets
    ``budget_cpu_minutes``, ``curve_at`` (CPU-minutes of the snapshots, maybe empty), ``curve_points`` and ``task``."""
    preset = PRESETS[opts.preset]
    resolve_budget_alias(opts)
    if opts.budget_cpu_minutes is None:
        opts.budget_cpu_minutes = preset.get("budget_cpu_minutes", DEFAULT_BUDGET_CPU_MINUTES)
    if opts.budget_cpu_minutes <= 0:
        raise SystemExit(f"--budget-cpu-minutes must be > 0, got {opts.budget_cpu_minutes:g}")
    if opts.max_time_factor < 1:
        raise SystemExit(f"--max-time-factor must be >= 1, got {opts.max_time_factor:g}")
    if opts.task is None:
        opts.task = (preset.get("task") or {}).get(
            kind, "multi30k_en_de,iwslt14_de_en" if kind == "translation" else "gigaword"
        )
    budget = opts.budget_cpu_minutes
    if opts.curve_at is not None:
        opts.curve_at = parse_curve_at(opts.curve_at)
    elif opts.curve_points is None and "curve_at" in preset:
        opts.curve_at = parse_curve_at(preset["curve_at"])
    else:
        points = DEFAULT_CURVE_POINTS if opts.curve_points is None else opts.curve_points
        opts.curve_at = [budget * k / (points + 1) for k in range(1, points + 1)] if points > 0 else []
    bad = [m for m in opts.curve_at if not 0 < m < budget]
    if bad or opts.curve_at != sorted(opts.curve_at):
        raise SystemExit(
            f"curve points {opts.curve_at} CPU-minutes: each must lie strictly between 0 and the budget "
            f"({budget:g}), in increasing order"
        )
    opts.curve_points = len(opts.curve_at)
    if opts.distill_baseline and not opts.distill:
        raise SystemExit("--distill-baseline needs --distill FILE")
    return opts


def parse_tasks(value: str, kind: str) -> list[Task]:
    tasks = []
    for name in [n.strip() for n in value.split(",") if n.strip()]:
        if name not in TASKS or TASKS[name].kind != kind:
            known = [n for n, t in TASKS.items() if t.kind == kind]
            raise SystemExit(f"unknown {kind} task {name!r}; known: {known}")
        tasks.append(TASKS[name])
    return tasks


def distill_path(opts: Any, task: Task, tasks: int = 1) -> Path | None:
    """The distilled training file of ``task`` (``--distill`` with ``{task}`` filled in), or None."""
    pattern = getattr(opts, "distill", None)
    if not pattern:
        return None
    if tasks > 1 and "{task}" not in pattern:
        raise SystemExit(
            f"--distill {pattern!r} names one file for {tasks} tasks: put '{{task}}' in the path or run one --task"
        )
    return Path(pattern.replace("{task}", task.name))


def trains_on_distilled(system: System, opts: Any) -> bool:
    """Whether ``system`` trains on the distilled file: every family but the autoregressive baseline, which
    only with --distill-baseline."""
    if not getattr(opts, "distill", None):
        return False
    return system.family != "autoregressive" or bool(getattr(opts, "distill_baseline", False))


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
    files: Sequence[Path],
    ema_decay: str,
    snapshot_every_s: float | None = None,
    max_snapshots: int = 10,
    cpu_budget_s: float | None = None,
    snapshot_at_cpu_s: Sequence[float] | None = None,
) -> dict:
    """The overlay each training run gets last: the recipe's callbacks (EMA decay adjusted) plus TrainingClock
    (with the CPU budget and the CPU-seconds of the snapshots when given; ``snapshot_every_s`` is wall-clock)."""
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
    clock: dict[str, Any] = {"snapshot_every_s": snapshot_every_s, "max_snapshots": max_snapshots}
    if cpu_budget_s is not None:
        clock["cpu_budget_s"] = float(cpu_budget_s)
    if snapshot_at_cpu_s:
        clock["snapshot_at_cpu_s"] = [float(v) for v in snapshot_at_cpu_s]
    callbacks.append({"class_path": "benchmarks.callbacks.TrainingClock", "init_args": clock})
    return {"trainer": {"callbacks": callbacks}}


def budget_settings(opts: Any) -> dict[str, Any]:
    """The budget of a training run from the options (also from the plain namespaces other benchmarks pass:
    ``budget_minutes`` and ``curve_points`` there, read as CPU-minutes and equal fractions)."""
    budget = getattr(opts, "budget_cpu_minutes", None)
    if budget is None:
        budget = opts.budget_minutes
    curve_at = getattr(opts, "curve_at", None)
    if curve_at is None:
        points = max(getattr(opts, "curve_points", 0) or 0, 0)
        curve_at = [budget * k / (points + 1) for k in range(1, points + 1)]
    factor = getattr(opts, "max_time_factor", None) or DEFAULT_MAX_TIME_FACTOR
    return {
        "budget_cpu_minutes": float(budget),
        "curve_at_cpu_minutes": [round(m, 4) for m in curve_at],
        "max_time_factor": float(factor),
        "max_time_minutes": float(budget) * float(factor),
    }


def train_command(
    system: System, task: Task, recipe: Path, overlay: Path, files: dict[str, Path], run_root: Path, opts: Any
) -> list[str]:
    """The ``fit`` command of one run; ``files["train"]`` is the training file it reads (the distilled one for a
    distilled run). ``trainer.max_time`` is only the wall-clock safety cap: the CPU budget stops the run."""
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
        format_max_time(budget_settings(opts)["max_time_minutes"]),
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


def run_dir(results_dir: str | Path, task: Task, system: System, distilled: bool) -> Path:
    """``runs/<task>/<system>``, or ``runs/<task>/<system>-distilled`` for a run on distilled data."""
    return Path(results_dir) / "runs" / task.name / (system.name + ("-distilled" if distilled else ""))


def _reusable(record: dict[str, Any], train_file: str, budget: dict[str, Any]) -> str | None:
    """Why a finished run's record does not match this run's training file and budget (None: it does)."""
    if record.get("train_file") != train_file:
        return f"trained on {record.get('train_file') or 'an unrecorded file'}, not {train_file}"
    if record.get("budget_cpu_minutes") != budget["budget_cpu_minutes"]:
        return f"budget {record.get('budget_cpu_minutes')} CPU-minutes, not {budget['budget_cpu_minutes']:g}"
    return None


def train(
    system: System,
    task: Task,
    run_root: Path,
    opts: Any,
    say: Progress,
    train_file: Path | None = None,
) -> dict[str, Any]:
    """Train one system (or reuse a finished run with the same training file and budget); returns the ``train``
    record. ``train_file`` replaces the task's training file (distillation)."""
    recipe, fallback = system.resolve_recipe(task)
    assert recipe is not None
    files = dict(task.files(Path(opts.data_root)))
    distilled = train_file is not None
    if train_file is not None:
        files["train"] = Path(train_file)
    budget = budget_settings(opts)
    existing = RunFiles.find(run_root) if opts.reuse_runs else None
    if existing is not None and read_clock(existing).get("finished"):
        record_path = run_root / "train_record.json"
        record = read_json(record_path) if record_path.is_file() else {}
        mismatch = _reusable(record, rel(files["train"]), budget)
        if mismatch is None:
            say(f"{task.name}/{system.name}: reusing {rel(existing.log_dir)}")
            record["reused"] = True
            return record
        say(f"{task.name}/{system.name}: not reusing {rel(existing.log_dir)} ({mismatch}): training again")
    if run_root.exists():
        shutil.rmtree(run_root)
    run_root.mkdir(parents=True)
    overlay_path = run_root / "benchmark_overlay.yaml"
    overlay = benchmark_overlay(
        [recipe, *(REPO / o for o in system.overlays)],
        opts.ema_decay,
        max_snapshots=len(budget["curve_at_cpu_minutes"]),
        cpu_budget_s=budget["budget_cpu_minutes"] * 60,
        snapshot_at_cpu_s=[m * 60 for m in budget["curve_at_cpu_minutes"]],
    )
    overlay_path.write_text(yaml.safe_dump(overlay, sort_keys=False), encoding="utf-8")
    cmd = train_command(system, task, recipe, overlay_path, files, run_root, opts)
    log_path = run_root / "train.log"
    say(
        f"{task.name}/{system.name}: training for {budget['budget_cpu_minutes']:g} CPU-min"
        f"{' on distilled data' if distilled else ''} (log {rel(log_path)})"
    )
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
            timeout=budget["max_time_minutes"] * 60 * 1.5 + 1800,
        )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    record: dict[str, Any] = {
        **budget,
        "train_file": rel(files["train"]),
        "distilled": distilled,
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
            train_cpu_seconds=clock.get("cpu_seconds"),
            train_seconds=clock.get("train_seconds"),
            budget_reached=clock.get("budget_reached"),
            snapshot_save_seconds=clock.get("snapshot_save_seconds"),
            snapshot_save_cpu_seconds=clock.get("snapshot_save_cpu_seconds"),
            log_dir=rel(run.log_dir),
        )
        stopped = (
            ""
            if record["budget_reached"]
            else " — stopped BEFORE the CPU budget was spent (max_time or max_steps)"
        )
        say(
            f"{task.name}/{system.name}: trained {record['steps']} steps in {record['train_cpu_seconds']} CPU s "
            f"({record['train_seconds']} s wall) of training ({wall:.0f} s wall with startup){stopped}"
        )
    write_json(run_root / "train_record.json", record)
    return record


# ---------------------------------------------------------------------------------------------- evaluation
def read_pairs(path: Path | str, empty: Literal["keep", "skip"] = "keep") -> list[Any]:
    """The ``{src, tgt}`` examples of a task file (targets required), pairs with an empty side kept or skipped."""
    from lightning_diffusion.data.jsonl import read_examples

    examples, _ = read_examples(str(path), src_key="src", tgt_keys=("tgt", "trg"), require_target=True, empty=empty)
    return examples


def count_examples(path: Path) -> int:
    return len(read_pairs(path))


HEALTH_KEYS = (
    "empty_hypotheses",
    "replacement_char_hypotheses",
    "repeated_word_hypotheses",
    "repeated_bigram_hypotheses",
    "unseen_word_hypotheses",
)


def reference_vocabulary(train_file: Path) -> frozenset[str] | None:
    """The words of a task's training references (the task's own file, never a distilled one), for the count of
    hypotheses with a word never seen there (:func:`lightning_diffusion.evaluation.has_unseen_word`); None when the
    file is not there. Read once per file version (path, size, modification time) and process."""
    if not train_file.is_file():
        return None
    stat = train_file.stat()
    return _vocabulary(str(train_file.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _vocabulary(path: str, size: int, mtime_ns: int) -> frozenset[str]:
    from lightning_diffusion.evaluation import known_words

    return known_words(example.tgt or "" for example in read_pairs(path))


def references_unseen_words(test_file: Path, train_file: Path, used: int) -> int | None:
    """How many of the first ``used`` test references hold a word the training references never do: the level a
    system's unseen-word count is read against (new compounds and names are common in a test set). Pairs with an
    empty side are left out first, as the data module does by default before it takes the first ``used``."""
    from lightning_diffusion.evaluation import has_unseen_word

    vocabulary = reference_vocabulary(train_file)
    if vocabulary is None:
        return None
    examples = read_pairs(test_file, empty="skip")[:used]
    return sum(1 for example in examples if has_unseen_word(example.tgt or "", vocabulary))


def with_health_rates(scores: dict[str, Any], sentences: int) -> dict[str, Any]:
    """``scores`` plus ``<count>_rate`` (fraction of the hypotheses, 4 decimals) for each output-health count."""
    out = dict(scores)
    for key in HEALTH_KEYS:
        count = out.get(key)
        out[f"{key}_rate"] = round(count / sentences, 4) if count is not None and sentences > 0 else None
    return out


def evaluate(system: System, task: Task, run_root: Path, opts: Any, say: Progress) -> dict[str, Any]:
    """Decode the test set with each decoding of the system; score; the quality-vs-training-time curve."""
    run = RunFiles.find(run_root)
    assert run is not None
    test_file = task.files(Path(opts.data_root))["test"]
    module = load_module(run)
    dm = build_datamodule(run, test_file, opts.test_examples if opts.test_examples > 0 else None)
    attach(module, dm)
    batches = list(dm.test_dataloader())
    vocabulary = reference_vocabulary(task.files(Path(opts.data_root))["train"])
    out: dict[str, Any] = {
        "parameters": parameter_count(module),
        "checkpoint": rel(run.checkpoint),
        "evaluations": [],
    }
    primary_rows: list[dict[str, Any]] = []
    for i, (name, overrides) in enumerate(system.decodings.items()):
        chosen = decoding_for(module, overrides)
        fields = decoding_fields(module, chosen)
        say(
            f"{task.name}/{system.name}: decoding {len(dm.datasets['test'])} test examples ({name}: {fields['settings']})"
        )
        decoded = decode_batches(module, batches, opts.seed, chosen)
        scores = with_health_rates(score(decoded.rows, vocabulary), decoded.sentences)
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
            f"({summary['decode_seconds']:.1f} s, {summary['sentences_per_second']} sentences/s); "
            f"empty {scores['empty_hypotheses']}, U+FFFD {scores['replacement_char_hypotheses']}, repeated word "
            f"{scores['repeated_word_hypotheses']}, repeated bigram {scores['repeated_bigram_hypotheses']}, unseen word "
            f"{scores['unseen_word_hypotheses']} of {decoded.sentences}"
        )
        if i == 0:
            primary_rows = decoded.rows
    out["curve"] = curve(system, task, run, run_root, module, primary_rows, opts, say, vocabulary)
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
    vocabulary: frozenset[str] | None = None,
) -> list[dict[str, Any]]:
    """Quality of the primary decoding on the first ``curve_examples`` test examples at each snapshot and at
    the end (the final point re-scores the final decode's hypotheses of those examples); ``vocabulary`` (the
    training references' words) for the unseen-word count."""
    if budget_settings(opts)["curve_at_cpu_minutes"] == [] or opts.curve_examples <= 0:
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
                "cpu_seconds": snap.get("cpu_seconds"),
                "train_seconds": snap["train_seconds"],
                "sentences": decoded.sentences,
                "source": f"snapshot {snap['path']}",
                **with_health_rates(score(decoded.rows, vocabulary), decoded.sentences),
            }
        )
        say(
            f"{task.name}/{system.name}: curve point at {snap.get('cpu_seconds', 0):.0f} CPU s (step {snap['step']}): "
            f"BLEU {points[-1]['bleu']:.2f}, ROUGE-L {points[-1]['rougeL']:.1f}"
        )
    subset = [row for row in final_rows if row["index"] < opts.curve_examples]
    if subset:
        points.append(
            {
                "step": final_module.checkpoint_step,
                "cpu_seconds": clock.get("cpu_seconds"),
                "train_seconds": clock.get("train_seconds"),
                "sentences": len(subset),
                "source": "final checkpoint",
                **with_health_rates(score(subset, vocabulary), len(subset)),
            }
        )
    return points


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def distill_record(path: Path, train_file: Path) -> dict[str, Any]:
    """What the JSON says about a distilled training file: its path, sha256, pairs, and from the sidecar
    ``<file>.provenance.json`` that ``lightning-diffusion distill`` writes the teacher, its decoding and whether
    the teacher decoded this task's training file. An unfinished distillation is refused."""
    if not path.is_file():
        raise SystemExit(
            f"--distill: {path} not found (make it with `lightning-diffusion distill TEACHER INPUT OUTPUT`)"
        )
    record: dict[str, Any] = {"file": rel(path), "sha256": sha256_of(path), "pairs": count_examples(path)}
    sidecar = path.with_name(path.name + ".provenance.json")
    if not sidecar.is_file():
        record["provenance"] = None
        return record
    prov = read_json(sidecar)
    if not prov.get("complete", False):
        raise SystemExit(
            f"--distill: {path} is unfinished ({prov.get('written')} of {prov.get('examples')} written, see "
            f"{sidecar.name}); run the same `lightning-diffusion distill` command again to finish it"
        )
    keep = (
        "teacher",
        "teacher_sha256",
        "teacher_class",
        "teacher_step",
        "decoding",
        "input",
        "input_sha256",
        "examples",
        "written",
        "finished",
        "library_version",
    )
    record["provenance"] = {key: prov.get(key) for key in keep if key in prov}
    record["provenance_file"] = rel(sidecar)
    record["input_is_train_file"] = prov.get("input_sha256") == sha256_of(train_file)
    return record


def scored_test_origin(task: Task, total: int) -> str | None:
    """What the scored test file is, from the task's description of its standard test file, stated only when the
    file has that file's size (so another file under the same name is not passed off as it)."""
    if task.test_name and (task.test_size is None or task.test_size == total):
        return task.test_name
    return None


def run_task(task: Task, systems: list[System], opts: Any, say: Progress, tasks: int = 1) -> dict[str, Any]:
    files = task.files(Path(opts.data_root))
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"{task.name}: data files not found: {missing} (set --data-root)")
    distill_file = distill_path(opts, task, tasks)
    distill = distill_record(distill_file, files["train"]) if distill_file is not None else None
    total = count_examples(files["test"])
    used = min(total, opts.test_examples) if opts.test_examples > 0 else total
    result: dict[str, Any] = {
        "task": task.name,
        "kind": task.kind,
        "metric": task.metric,
        "note": task.note,
        "data": {
            "train_file": rel(files["train"]),
            "train_examples": count_examples(files["train"]),
            "test_file": rel(files["test"]),
            "test_origin": scored_test_origin(task, total),
            "test_examples": used,
            "test_examples_total": total,
            "test_selection": "all" if used == total else f"first {used} of {total} in file order",
            "test_references_unseen_words": references_unseen_words(files["test"], files["train"], used),
            "distill": distill,
        },
        "systems": [],
    }
    if distill is not None and distill.get("input_is_train_file") is False:
        say(
            f"{task.name}: warning: {distill['file']} was distilled from another input than {rel(files['train'])}"
        )
    for system in systems:
        distilled = distill_file is not None and trains_on_distilled(system, opts)
        entry: dict[str, Any] = {
            "system": system.name,
            "family": system.family,
            "distilled": distilled,
            "definition": system.to_dict(),
        }
        result["systems"].append(entry)
        reason = system.unavailable(task)
        if reason:
            entry.update(status="skipped", reason=reason)
            say(f"{task.name}/{system.name}: skipped ({reason})")
            continue
        run_root = run_dir(opts.results_dir, task, system, distilled)
        entry["train"] = train(system, task, run_root, opts, say, distill_file if distilled else None)
        if entry["train"].get("returncode", 0) != 0 or RunFiles.find(run_root) is None:
            entry["status"] = "failed"
            continue
        try:
            entry.update(evaluate(system, task, run_root, opts, say))
            entry["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - record and go on with the other systems
            entry.update(status="failed", error=f"evaluation: {type(err).__name__}: {err}")
            say(f"{task.name}/{system.name}: evaluation FAILED: {type(err).__name__}: {err}")
    baseline = next(
        (e for e in result["systems"] if e["family"] == "autoregressive" and e.get("parameters")), None
    )
    for entry in result["systems"]:
        if baseline is not None and entry.get("parameters"):
            entry["parameters_vs_baseline"] = round(entry["parameters"] / baseline["parameters"], 4)
    return result


def results_stem(kind: str, task: Task, opts: Any) -> str:
    """``<kind>_<task>``, with ``_distilled`` for a run with --distill (so it does not replace the other)."""
    return f"{kind}_{task.name}" + ("_distilled" if getattr(opts, "distill", None) else "")


def keep_previous_results(path: Path, systems: Sequence[str]) -> Path | None:
    """Before ``path`` is rewritten: if it holds results of systems that this invocation does not score (a re-decode
    of some systems with ``--reuse-runs`` into the same directory), move it to ``<stem>.before-<UTC time>.json`` so
    those rows are not lost; returns the new path, or None when nothing would be lost."""
    if not path.is_file():
        return None
    try:
        previous = {row.get("system") for row in json.loads(path.read_text(encoding="utf-8")).get("systems", [])}
    except (json.JSONDecodeError, AttributeError):
        previous = {None}  # unreadable: keep it rather than guess
    if previous <= set(systems):
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = path.with_name(f"{path.stem}.before-{stamp}.json")
    path.replace(kept)
    return kept


def main(kind: str, argv: Sequence[str] | None, module_name: str) -> list[Path]:
    parser = argparse.ArgumentParser(
        prog=f"python -m {module_name}",
        description=(
            f"{kind.capitalize()} quality at an equal CPU training budget: every system is trained for "
            "--budget-cpu-minutes of process CPU time with `lightning-diffusion fit` and scored on the test set."
        ),
    )
    add_arguments(parser, kind)
    opts = resolve_options(parser.parse_args(argv), kind)
    tasks = parse_tasks(opts.task, kind)
    systems = select(load_systems(opts.systems_file), opts.systems)
    for task in tasks:  # a --distill path without {task} for several tasks fails here, before any training
        distill_path(opts, task, len(tasks))
    say = Progress(kind)
    written = []
    budget = budget_settings(opts)
    for task in tasks:
        settings = {
            "preset": opts.preset,
            "budget_cpu_minutes": budget["budget_cpu_minutes"],
            "budget_clock": "process CPU time of the training process (time.process_time, all threads), from the "
            "first training batch, snapshot saving excluded",
            "max_time_minutes": budget["max_time_minutes"],
            "max_time_factor": budget["max_time_factor"],
            "max_steps": opts.max_steps,
            "test_examples_requested": opts.test_examples,
            "curve_points": opts.curve_points,
            "curve_at_cpu_minutes": budget["curve_at_cpu_minutes"],
            "curve_examples": opts.curve_examples,
            "ema_decay": opts.ema_decay,
            "decode_seed": opts.seed,
            "train_args": opts.train_arg,
            "distill": opts.distill,
            "distill_baseline": opts.distill_baseline,
            "validation_during_training": False,
        }
        data = envelope(kind, argv, module_name, settings)
        started = time.perf_counter()
        say(f"{task.name}: {len(systems)} systems, {budget['budget_cpu_minutes']:g} CPU-min training each")
        data.update(run_task(task, systems, opts, say, len(tasks)))
        data["wall_seconds"] = round(time.perf_counter() - started, 1)
        path = Path(opts.results_dir) / f"{results_stem(kind, task, opts)}.json"
        kept = keep_previous_results(path, [row["system"] for row in data.get("systems", [])])
        if kept is not None:
            say(f"{task.name}: {rel(path)} held other systems too; kept it as {rel(kept)}")
        path = write_json(path, data)
        from benchmarks import report

        report.write_benchmark_outputs(path, plots=not opts.no_plots)
        say(f"{task.name}: wrote {rel(path)} ({data['wall_seconds']:.0f} s)")
        written.append(path)
    return written
