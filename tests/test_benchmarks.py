"""Smoke tests of the benchmarks (benchmarks/): every entry point runs on tiny data with tiny models and a
couple of training steps, and writes JSON with the documented fields, a markdown table and (with matplotlib)
its plots; run_all writes RESULTS.md from all of them. The real benchmarks are not run here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, TinyData

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import attention, report, speed, summarization, throughput, translation  # noqa: E402
from benchmarks.common import format_max_time  # noqa: E402
from benchmarks.quality import (  # noqa: E402
    add_arguments,
    benchmark_overlay,
    distill_record,
    keep_previous_results,
    reference_vocabulary,
    resolve_options,
)
from benchmarks.systems import SYSTEMS, TASKS, System  # noqa: E402
from lightning_diffusion.evaluation import has_unseen_word, known_words  # noqa: E402

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAS_AR = importlib.util.find_spec("lightning_diffusion.autoregressive") is not None

TINY_DENOISER = [
    "--model.denoiser.hidden_dim",
    "32",
    "--model.denoiser.num_heads",
    "2",
    "--model.denoiser.ffn_dim",
    "64",
    "--model.denoiser.latent_dim",
    "16",
]


def tiny_systems(cache: Path) -> list[dict[str, Any]]:
    common = [
        "--data.tokenizer_vocab_size",
        "300",
        "--data.max_tokens",
        "256",
        "--data.eval_max_tokens",
        "1024",
        "--data.tokenizer_cache_dir",
        str(cache),
        "--trainer.accelerator",
        "cpu",
    ]
    systems = [
        {
            "name": "difformer",
            "family": "difformer",
            "recipe": "recipes/difformer/{task}.yaml",
            "args": [
                *TINY_DENOISER,
                "--model.denoiser.encoder_layers",
                "1",
                "--model.denoiser.decoder_layers",
                "1",
                "--model.sampler.steps",
                "3",
                "--model.length_beam",
                "2",
                "--model.noise_beam",
                "1",
                *common,
            ],
        },
        {
            "name": "diffuseq",
            "family": "diffuseq",
            "recipe": "recipes/diffuseq/{task}.yaml",
            "args": [
                *TINY_DENOISER,
                "--model.denoiser.num_layers",
                "1",
                "--model.sampler.steps",
                "3",
                "--model.noise_beam",
                "2",
                *common,
            ],
        },
    ]
    if HAS_AR:
        systems.append(
            {
                "name": "autoregressive",
                "family": "autoregressive",
                "recipe": "recipes/autoregressive/{task}.yaml",
                "args": [
                    "--model.network.hidden_dim",
                    "32",
                    "--model.network.num_heads",
                    "2",
                    "--model.network.ffn_dim",
                    "64",
                    "--model.network.encoder_layers",
                    "1",
                    "--model.network.decoder_layers",
                    "1",
                    *common,
                ],
                "decodings": {
                    "greedy": {"search": {"class_path": "lightning_diffusion.autoregressive.GreedySearch"}},
                    "beam2": {
                        "search": {
                            "class_path": "lightning_diffusion.autoregressive.BeamSearch",
                            "init_args": {"beam_size": 2},
                        }
                    },
                },
                "requires": ["lightning_diffusion.autoregressive.AutoregressiveLM"],
            }
        )
    return systems


def bench_pairs(bench: Bench, split: str) -> list[dict[str, str]]:
    """The Multi30k-named split the benchmark read, as written into its data root."""
    path = bench.data_root / "multi30k_en_de" / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Bench:
    def __init__(self, root: Path, data: TinyData) -> None:
        self.root = root
        self.results = root / "results"
        self.data_root = root / "data"
        for task, files in {
            "multi30k_en_de": ("train", "valid", "test"),
            "gigaword": ("train", "valid"),
        }.items():
            (self.data_root / task).mkdir(parents=True)
            for split in files:
                (self.data_root / task / f"{split}.jsonl").write_bytes(getattr(data, split).read_bytes())
        self.systems_file = root / "systems.json"
        self.systems_file.write_text(json.dumps(tiny_systems(data.cache)), encoding="utf-8")

    def args(self) -> list[str]:
        return [
            "--data-root",
            str(self.data_root),
            "--results-dir",
            str(self.results),
            "--systems-file",
            str(self.systems_file),
        ]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # the training subprocesses: tiny models, loaded machine
        mp.setenv("MKL_NUM_THREADS", "1")
        yield Bench(tmp_path_factory.mktemp("bench"), tiny_data)


CPU_BUDGET_S = 3.0
QUALITY = [
    "--budget-cpu-minutes",
    str(CPU_BUDGET_S / 60),
    "--max-time-factor",
    "20",  # a generous wall-clock cap: the CPU budget, not the cap, must stop these runs on a loaded machine
    "--max-steps",
    "100000",
    "--curve-points",
    "1",
    "--curve-examples",
    "8",
    "--test-examples",
    "12",
]


@pytest.fixture(scope="module")
def translation_json(bench: Bench) -> dict[str, Any]:
    systems = "difformer,autoregressive" if HAS_AR else "difformer"
    translation.main(["--task", "multi30k_en_de", "--systems", systems, *QUALITY, *bench.args()])
    return json.loads((bench.results / "translation_multi30k_en_de.json").read_text())


@pytest.fixture(scope="module")
def summarization_json(bench: Bench) -> dict[str, Any]:
    summarization.main(
        ["--task", "gigaword", "--systems", "diffuseq", *QUALITY, "--curve-points", "0", *bench.args()]
    )
    return json.loads((bench.results / "summarization_gigaword.json").read_text())


def write_distilled(bench: Bench, tiny_data: TinyData, complete: bool = True) -> Path:
    """A stand-in for `lightning-diffusion distill` output: the tiny training pairs with their targets uppercased,
    and a provenance sidecar naming the task's training file as the input."""
    import hashlib

    path = bench.root / "distilled" / "multi30k_en_de.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"src": r["src"], "tgt": r["tgt"].upper()} for r in tiny_data.pairs("train")]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    train = bench.data_root / "multi30k_en_de" / "train.jsonl"
    sidecar = {
        "teacher": "teacher.ckpt",
        "teacher_sha256": "0" * 64,
        "teacher_step": 7,
        "decoding": "beam 4",
        "input": str(train),
        "input_sha256": hashlib.sha256(train.read_bytes()).hexdigest(),
        "examples": len(rows),
        "written": len(rows),
        "complete": complete,
    }
    (path.parent / (path.name + ".provenance.json")).write_text(json.dumps(sidecar), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def distilled_json(bench: Bench, tiny_data: TinyData) -> dict[str, Any]:
    """A short run with --distill ({task} pattern): the diffusion system trains on the distilled file, the
    autoregressive baseline on the task's training file."""
    distilled = write_distilled(bench, tiny_data)
    systems = "diffuseq,autoregressive" if HAS_AR else "diffuseq"
    translation.main(
        [
            "--task",
            "multi30k_en_de",
            "--systems",
            systems,
            "--distill",
            str(distilled.parent / "{task}.jsonl"),
            "--budget-cpu-minutes",
            "0.01",
            "--max-steps",
            "2",
            "--curve-points",
            "0",
            "--test-examples",
            "4",
            "--no-plots",
            *bench.args(),
        ]
    )
    return json.loads((bench.results / "translation_multi30k_en_de_distilled.json").read_text())


@pytest.fixture(scope="module")
def speed_json(bench: Bench, translation_json: dict[str, Any]) -> dict[str, Any]:
    systems = "difformer,autoregressive" if HAS_AR else "difformer"
    speed.main(
        [
            "--systems",
            systems,
            "--steps",
            "2,4",
            "--batch-sizes",
            "1,4",
            "--speed-sentences",
            "2",
            "--bleu-examples",
            "8",
            "--quick-train-minutes",
            "0",
            "--runs-dir",
            str(bench.results / "runs"),
            *bench.args(),
        ]
    )
    return json.loads((bench.results / "speed.json").read_text())


@pytest.fixture(scope="module")
def throughput_json(bench: Bench) -> dict[str, Any]:
    throughput.main(["--systems", "difformer", "--steps", "2", "--warmup-steps", "1", *bench.args()])
    return json.loads((bench.results / "throughput.json").read_text())


@pytest.fixture(scope="module")
def attention_json(bench: Bench) -> dict[str, Any]:
    attention.main(
        ["--lengths", "16,32", "--repeats", "1", "--warmup", "0", "--results-dir", str(bench.results)]
    )
    return json.loads((bench.results / "attention.json").read_text())


def check_envelope(data: dict[str, Any], benchmark: str) -> None:
    assert data["benchmark"] == benchmark
    assert data["schema_version"] == 1
    assert data["command"].startswith(f"python -m benchmarks.{benchmark}")
    assert data["date"].endswith("Z")
    for key in ("cpu_model", "cpu_cores", "torch", "lightning", "torch_threads"):
        assert data["machine"][key], key
    assert isinstance(data["settings"], dict)


def check_outputs(bench: Bench, stem: str, *pngs: str) -> None:
    md = (bench.results / f"{stem}.md").read_text()
    assert md.startswith("### ") and "| " in md and "Command: `python -m benchmarks." in md
    if HAS_MATPLOTLIB:
        for name in pngs:
            assert (bench.results / name).stat().st_size > 0, name


# ---------------------------------------------------------------------------------------------- units
def test_a_re_decode_of_some_systems_keeps_the_results_of_the_others(tmp_path: Path) -> None:
    path = tmp_path / "translation_multi30k_en_de.json"
    assert keep_previous_results(path, ["difformer"]) is None  # nothing there yet
    path.write_text(json.dumps({"systems": [{"system": "difformer"}, {"system": "discrete"}]}))
    assert keep_previous_results(path, ["difformer", "discrete", "autoregressive"]) is None  # nothing would be lost
    assert path.is_file()
    kept = keep_previous_results(path, ["difformer"])
    assert kept is not None and not path.exists() and kept.name.startswith("translation_multi30k_en_de.before-")
    assert json.loads(kept.read_text())["systems"][1]["system"] == "discrete"


def test_format_max_time() -> None:
    assert format_max_time(3) == "00:00:03:00"
    assert format_max_time(0.001) == "00:00:00:01"
    assert format_max_time(90.5) == "00:01:30:30"


def test_default_systems_and_tasks() -> None:
    names = [s.name for s in SYSTEMS]
    assert names == ["diffuseq", "seqdiffuseq", "difformer", "cdcd", "discrete", "autoregressive"]
    by_name = {s.name: s for s in SYSTEMS}
    for task in ("multi30k_en_de", "iwslt14_de_en", "gigaword"):
        for name in ("diffuseq", "seqdiffuseq", "difformer", "discrete"):
            recipe, _ = by_name[name].resolve_recipe(TASKS[task])
            assert recipe is not None and recipe.is_file(), (name, task)
    # DiffuSeq has no IWSLT recipe: the Multi30k one is used with the IWSLT data
    assert by_name["diffuseq"].resolve_recipe(TASKS["iwslt14_de_en"])[1] is True
    # CDCD has a Multi30k recipe only: IWSLT falls back to it, Gigaword is skipped (reported, not an error)
    assert by_name["cdcd"].resolve_recipe(TASKS["multi30k_en_de"])[1] is False
    assert by_name["cdcd"].resolve_recipe(TASKS["iwslt14_de_en"])[1] is True
    assert by_name["cdcd"].unavailable(TASKS["multi30k_en_de"]) is None
    assert "no recipe" in (by_name["cdcd"].unavailable(TASKS["gigaword"]) or "")
    missing = System("x", "x", "recipes/x/{task}.yaml")
    assert "no recipe" in (missing.unavailable(TASKS["gigaword"]) or "")


def test_benchmark_overlay_keeps_callbacks_sets_ema_decay_and_adds_clock() -> None:
    recipe = REPO / "recipes" / "difformer" / "multi30k_en_de.yaml"

    def ema(callbacks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [c for c in callbacks if c["class_path"].endswith(("EMAWeightAveraging", ".EMA"))]

    kept = benchmark_overlay([recipe], "recipe", None, 0)["trainer"]["callbacks"]
    recipe_callbacks = yaml.safe_load(recipe.read_text())["trainer"]["callbacks"]
    assert kept[:-1] == recipe_callbacks
    assert kept[-1]["class_path"] == "benchmarks.callbacks.TrainingClock"
    changed = benchmark_overlay([recipe], "0.99", 10.0, 3)["trainer"]["callbacks"]
    assert ema(recipe_callbacks), "the recipe has no EMA callback any more: update the test"
    assert all(c["init_args"]["decay"] == 0.99 for c in ema(changed))
    assert changed[-1]["init_args"] == {"snapshot_every_s": 10.0, "max_snapshots": 3}
    cpu = benchmark_overlay(
        [recipe], "recipe", max_snapshots=2, cpu_budget_s=60.0, snapshot_at_cpu_s=[20, 40]
    )
    assert cpu["trainer"]["callbacks"][-1]["init_args"] == {
        "snapshot_every_s": None,
        "max_snapshots": 2,
        "cpu_budget_s": 60.0,
        "snapshot_at_cpu_s": [20.0, 40.0],
    }


def options(kind: str, *argv: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser, kind)
    return resolve_options(parser.parse_args(list(argv)), kind)


def test_budget_options_presets_and_deprecated_alias(capsys: pytest.CaptureFixture[str]) -> None:
    smoke = options("translation")
    assert smoke.budget_cpu_minutes == 3.0 and smoke.curve_at == [1.0, 2.0] and smoke.curve_points == 2
    assert smoke.task == "multi30k_en_de,iwslt14_de_en"
    headline = options("translation", "--preset", "headline")
    assert headline.budget_cpu_minutes == 10.0 and headline.curve_at == [2.5, 5.0]
    assert headline.task == "multi30k_en_de"
    # explicit options win over the preset
    mine = options("translation", "--preset", "headline", "--task", "iwslt14_de_en", "--curve-points", "1")
    assert mine.task == "iwslt14_de_en" and mine.curve_at == [5.0] and mine.budget_cpu_minutes == 10.0
    assert options("summarization", "--preset", "headline").task == "gigaword"
    assert options("translation", "--curve-at", "0.5,1.5").curve_at == [0.5, 1.5]
    assert options("translation", "--curve-points", "0").curve_at == []
    # the deprecated alias means the same CPU-minutes, with a warning
    old = options("translation", "--budget-minutes", "2")
    assert old.budget_cpu_minutes == 2.0 and "deprecated" in capsys.readouterr().err
    for bad in (
        ["--budget-minutes", "2", "--budget-cpu-minutes", "3"],
        ["--curve-at", "4"],  # not below the 3-minute budget
        ["--curve-at", "2,1"],
        ["--budget-cpu-minutes", "0"],
        ["--distill-baseline"],
    ):
        with pytest.raises(SystemExit):
            options("translation", *bad)


def test_distill_record_refuses_an_unfinished_file(bench: Bench, tiny_data: TinyData, tmp_path: Path) -> None:
    train = bench.data_root / "multi30k_en_de" / "train.jsonl"
    path = write_distilled(bench, tiny_data, complete=False)
    with pytest.raises(SystemExit, match="unfinished"):
        distill_record(path, train)
    path = write_distilled(bench, tiny_data, complete=True)
    record = distill_record(path, train)
    assert record["input_is_train_file"] is True and record["pairs"] == len(tiny_data.pairs("train"))
    assert record["provenance"]["teacher"] == "teacher.ckpt"
    with pytest.raises(SystemExit, match="not found"):
        distill_record(tmp_path / "missing.jsonl", train)


def test_training_clock_stops_at_the_cpu_budget(tmp_path: Path) -> None:
    """TrainingClock alone (the real trainer runs it in test_translation): CPU seconds from the first batch, stop
    once the budget is spent."""
    from benchmarks.callbacks import TrainingClock

    class Busy:  # a trainer stand-in: the clock only reads these
        is_global_zero = True
        global_step = 0
        should_stop = False
        log_dir = str(tmp_path)
        default_root_dir = str(tmp_path)

    trainer = Busy()
    clock = TrainingClock(cpu_budget_s=0.3)
    clock.on_train_start(trainer, None)  # type: ignore[arg-type]
    clock.on_train_batch_start(trainer, None, None, 0)  # type: ignore[arg-type]
    while not trainer.should_stop:
        sum(i * i for i in range(20_000))  # burn CPU
        trainer.global_step += 1
        clock.on_train_batch_end(trainer, None, None, None, 0)  # type: ignore[arg-type]
        assert trainer.global_step < 10_000_000
    clock.on_train_end(trainer, None)  # type: ignore[arg-type]
    data = json.loads((tmp_path / "training_clock.json").read_text())
    assert data["finished"] and data["budget_reached"] and data["steps"] > 0
    assert data["cpu_seconds"] >= 0.3 and data["train_seconds"] > 0 and data["cpu_budget_seconds"] == 0.3


def test_translation(bench: Bench, translation_json: dict[str, Any]) -> None:
    data = translation_json
    check_envelope(data, "translation")
    assert data["task"] == "multi30k_en_de" and data["metric"] == "bleu"
    assert data["data"]["test_examples"] == 12 and data["data"]["test_examples_total"] == 16
    diff = next(s for s in data["systems"] if s["system"] == "difformer")
    assert diff["status"] == "ok", diff
    assert diff["parameters"] > 0
    train = diff["train"]
    assert train["steps"] >= 1 and train["train_seconds"] > 0
    assert (
        train["budget_cpu_minutes"] == CPU_BUDGET_S / 60
        and data["settings"]["budget_cpu_minutes"] == CPU_BUDGET_S / 60
    )
    # the CPU budget, not max_steps (100,000) or the wall-clock cap (20 x 3 s), stopped the run
    assert "--trainer.max_time 00:00:01:00" in train["command"]
    clock = json.loads((REPO / train["log_dir"] / "training_clock.json").read_text())
    assert clock["budget_reached"] and clock["steps"] > 0 and clock["cpu_seconds"] >= CPU_BUDGET_S
    assert train["budget_reached"] and train["train_cpu_seconds"] == clock["cpu_seconds"]
    assert clock["steps"] == train["steps"] < 100000
    (snapshot,) = clock["snapshots"]  # one curve point: at half the budget
    assert CPU_BUDGET_S / 2 <= snapshot["cpu_seconds"] < CPU_BUDGET_S
    assert train["distilled"] is False and train["train_file"].endswith("multi30k_en_de/train.jsonl")
    assert data["data"]["test_origin"] is None  # a 16-line file is not Multi30k's test_2016_flickr
    (ev,) = diff["evaluations"]
    assert ev["decoding"] == "recipe" and ev["sentences"] == 12
    assert ev["bleu_signature"].startswith("nrefs:1|")
    assert 0 <= ev["bleu"] <= 100
    assert (
        ev["sampling_steps"] == 3 and ev["nfe_mean"] == 3 and ev["length_beam"] == 2 and ev["noise_beam"] == 1
    )
    assert ev["candidates"] == 2 and ev["sentences_per_second"] > 0
    for key in ("empty_hypotheses", "replacement_char_hypotheses", "repeated_word_hypotheses", "repeated_bigram_hypotheses"):
        assert 0 <= ev[key] <= 12 and ev[f"{key}_rate"] == round(ev[key] / 12, 4)
    for key in ("empty_hypotheses", "replacement_char_hypotheses", "repeated_word_hypotheses"):
        assert 0 <= ev[key] <= 12 and ev[f"{key}_rate"] == round(ev[key] / 12, 4)
    hyp_file = REPO / ev["hypotheses_file"] if (REPO / ev["hypotheses_file"]).is_file() else Path(ev["hypotheses_file"])
    assert hyp_file.is_file()
    # unseen words: counted against the task's own training targets (not sources, not another split), over the
    # scored rows; the first 12 test references' own count beside them
    vocabulary = known_words(row["tgt"] for row in bench_pairs(bench, "train"))
    rows = [json.loads(line) for line in hyp_file.read_text(encoding="utf-8").splitlines()]
    assert ev["unseen_word_hypotheses"] == sum(has_unseen_word(row["hypothesis"], vocabulary) for row in rows)
    refs = [row["tgt"] for row in bench_pairs(bench, "test")[:12]]
    assert [row["reference"] for row in rows] == refs
    assert data["data"]["test_references_unseen_words"] == sum(has_unseen_word(ref, vocabulary) for ref in refs)
    assert diff["curve"][-1]["source"] == "final checkpoint" and diff["curve"][-1]["sentences"] == 8
    assert len(diff["curve"]) >= 2, "no snapshot was taken during training"
    assert diff["curve"][0]["source"].startswith("snapshot")
    assert diff["curve"][0]["cpu_seconds"] < diff["curve"][-1]["cpu_seconds"]
    if HAS_AR:
        ar = next(s for s in data["systems"] if s["system"] == "autoregressive")
        assert ar["status"] == "ok", ar
        assert [e["decoding"] for e in ar["evaluations"]] == ["greedy", "beam2"]
        assert [e["beam_size"] for e in ar["evaluations"]] == [1, 2]
        assert [e["candidates"] for e in ar["evaluations"]] == [1, 2]
        assert all(e["sampling_steps"] is None and e["nfe_mean"] >= 1 for e in ar["evaluations"])
        assert diff["parameters_vs_baseline"] == round(diff["parameters"] / ar["parameters"], 4)
    check_outputs(bench, "translation_multi30k_en_de", "bleu_vs_training_time_multi30k_en_de.png")
    md = (bench.results / "translation_multi30k_en_de.md").read_text()
    for column in (
        "| distilled |",
        "| train CPU (s) |",
        "| empty |",
        "| U+FFFD |",
        "repetition rate",
        "params / baseline",
    ):
        assert column in md, column
    assert f"Every system trained for {CPU_BUDGET_S / 60:g} CPU-minutes" in md
    assert "training CPU seconds" in md  # the curve's clock


def test_translation_distilled(bench: Bench, distilled_json: dict[str, Any]) -> None:
    data = distilled_json
    distilled = bench.root / "distilled" / "multi30k_en_de.jsonl"
    assert data["settings"]["distill"].endswith("{task}.jsonl")
    assert data["data"]["distill"]["file"].endswith("distilled/multi30k_en_de.jsonl")
    assert data["data"]["distill"]["input_is_train_file"] is True
    diff = next(s for s in data["systems"] if s["system"] == "diffuseq")
    assert diff["status"] == "ok", diff
    assert diff["distilled"] is True and diff["train"]["distilled"] is True
    assert Path(diff["train"]["train_file"]).name == "multi30k_en_de.jsonl"
    assert f"--data.train_file {diff['train']['train_file']}" in diff["train"]["command"]
    assert (REPO / diff["train"]["train_file"]).resolve() == distilled.resolve()
    assert "/diffuseq-distilled/" in diff["train"]["log"]
    # unseen words are read against the task's own references, not the (uppercased) distilled targets
    vocabulary = known_words(row["tgt"] for row in bench_pairs(bench, "train"))
    refs = [row["tgt"] for row in bench_pairs(bench, "test")[: data["data"]["test_examples"]]]
    assert data["data"]["test_references_unseen_words"] == sum(has_unseen_word(ref, vocabulary) for ref in refs)
    md = (bench.results / "translation_multi30k_en_de_distilled.md").read_text()
    assert "(distilled training data)" in md and "| diffuseq | yes |" in md
    if HAS_AR:
        ar = next(s for s in data["systems"] if s["system"] == "autoregressive")
        assert ar["status"] == "ok", ar
        assert ar["distilled"] is False and ar["train"]["train_file"].endswith("multi30k_en_de/train.jsonl")
        assert "--data.train_file " + ar["train"]["train_file"] in ar["train"]["command"]
        assert "| autoregressive | no |" in md


def test_report_renders_health_counts_and_the_test_file_scored() -> None:
    ev = {
        "decoding": "recipe",
        "bleu": 1.0,
        "bleu_signature": "nrefs:1|x",
        "sentences": 8,
        "candidates": 1,
        "empty_hypotheses": 1,
        "empty_hypotheses_rate": 0.125,
        "replacement_char_hypotheses": 0,
        "replacement_char_hypotheses_rate": 0.0,
        "repeated_word_hypotheses": 2,
        "repeated_word_hypotheses_rate": 0.25,
        "unseen_word_hypotheses": 3,
        "unseen_word_hypotheses_rate": 0.375,
    }
    data = {
        "benchmark": "translation",
        "task": "multi30k_en_de",
        "metric": "bleu",
        "note": "Multi30k En->De",
        "data": {
            "test_file": "x/test.jsonl",
            "test_origin": "Multi30k test_2016_flickr",
            "test_examples": 8,
            "test_examples_total": 1000,
            "test_selection": "first 8 of 1000 in file order",
            "test_references_unseen_words": 2,
            "train_file": "x/train.jsonl",
        },
        "settings": {
            "budget_cpu_minutes": 10.0,
            "max_time_minutes": 40.0,
            "preset": "headline",
            "ema_decay": "recipe",
            "decode_seed": 0,
            "curve_examples": 8,
        },
        "systems": [
            {
                "system": "ar",
                "family": "autoregressive",
                "status": "ok",
                "parameters": 200,
                "evaluations": [ev],
                "train": {"steps": 5, "train_cpu_seconds": 600.1, "budget_reached": True},
            },
            {
                "system": "d",
                "family": "diffuseq",
                "status": "ok",
                "parameters": 100,
                "distilled": True,
                "evaluations": [ev],
                "train": {"steps": 5, "train_cpu_seconds": 90.0, "budget_reached": False},
            },
        ],
    }
    md = report.quality_markdown(data)
    assert "`x/test.jsonl`, Multi30k test_2016_flickr" in md and "first 8 of 1000" in md
    assert "10 CPU-minutes (preset `headline`)" in md
    assert "| 1 (12.5%) | 0 (0.0%) | 2 (25.0%) | – | 3 (37.5%) |" in md  # no repeated-bigram count recorded: –
    assert "| unseen word |" in md and "found nowhere in the task's training references" in md
    assert "Test references holding a word the training references never do: 2 of 8 (25.0%)" in md
    assert "| ar | no | recipe |" in md and "| d | yes | recipe |" in md
    assert (
        "| 50% |" in md and "90.00 (stopped early)" in md and "(the wall-clock cap or --max-steps): d." in md
    )
    # the first results files (wall-clock budget, no health counts) still render
    old = json.loads(json.dumps(data))
    old["settings"] = {"budget_minutes": 2.0, "ema_decay": "recipe", "decode_seed": 0, "curve_examples": 8}
    for sysd in old["systems"]:
        sysd["evaluations"] = [{k: v for k, v in ev.items() if "hypotheses" not in k}]
        sysd["train"] = {"steps": 5, "train_seconds": 120.0}
    md = report.quality_markdown(old)
    assert "2 min of wall-clock training time" in md and "| – | – | – |" in md


def test_summarization(bench: Bench, summarization_json: dict[str, Any]) -> None:
    data = summarization_json
    check_envelope(data, "summarization")
    assert data["metric"] == "rougeL" and data["data"]["test_file"].endswith("gigaword/valid.jsonl")
    (system,) = data["systems"]
    assert system["status"] == "ok", system
    (ev,) = system["evaluations"]
    for key in ("rouge1", "rouge2", "rougeL", "bleu"):
        assert 0 <= ev[key] <= 100
    assert ev["candidates"] == 2 and ev["noise_beam"] == 2 and ev["length_beam"] is None
    assert system["curve"] == []
    md = (bench.results / "summarization_gigaword.md").read_text()
    assert "ROUGE-L" in md


def test_speed(bench: Bench, speed_json: dict[str, Any]) -> None:
    data = speed_json
    check_envelope(data, "speed")
    diff = next(s for s in data["systems"] if s["system"] == "difformer")
    assert diff["status"] == "ok", diff
    combos = {(r["sampling_steps"], r["batch_size"]) for r in diff["speed"]}
    assert combos == {(2, 1), (2, 4), (4, 1), (4, 4)}
    for r in diff["speed"]:
        assert (
            r["sentences_per_second"] > 0
            and r["latency_ms_median"] > 0
            and r["nfe_mean"] == r["sampling_steps"]
        )
        assert r["sentences"] == max(2, r["batch_size"]) and r["candidates"] == 2
    assert [r["sampling_steps"] for r in diff["bleu_vs_steps"]] == [2, 4]
    assert all(r["sentences"] == 8 and "bleu_signature" in r for r in diff["bleu_vs_steps"])
    if HAS_AR:
        ar = next(s for s in data["systems"] if s["system"] == "autoregressive")
        assert ar["status"] == "ok", ar
        assert {(r["decoding"], r["batch_size"]) for r in ar["speed"]} == {
            (d, b) for d in ("greedy", "beam2") for b in (1, 4)
        }
        assert [r["decoding"] for r in ar["bleu_vs_steps"]] == ["greedy", "beam2"]
    check_outputs(bench, "speed", "bleu_vs_steps.png", "sentences_per_s_vs_batch.png")


def test_throughput(bench: Bench, throughput_json: dict[str, Any]) -> None:
    data = throughput_json
    check_envelope(data, "throughput")
    (system,) = data["systems"]
    assert system["status"] == "ok", system
    for mode in ("lightning", "bare"):
        result = system["modes"][mode]
        assert result["timed_steps"] == 2 and result["tokens"] > 0 and result["tokens_per_second"] > 0
        assert result["peak_memory_bytes"] >= 0 and result["memory_method"]
    # the same batches in both loops
    assert system["modes"]["lightning"]["tokens"] == system["modes"]["bare"]["tokens"]
    assert system["overhead_ratio"] > 0
    check_outputs(bench, "throughput")


def test_attention(bench: Bench, attention_json: dict[str, Any]) -> None:
    data = attention_json
    check_envelope(data, "attention")
    rows = data["results"]
    assert {(r["implementation"], r["length"]) for r in rows} == {
        (impl, n) for impl in ("naive", "library (SDPA)") for n in (16, 32)
    }
    for r in rows:
        assert r["forward_ms"] > 0 and r["forward_backward_ms"] > 0 and r["forward_peak_bytes"] >= 0
        if r["implementation"] != "naive":
            assert r["max_abs_diff_vs_naive"] < 1e-4
    check_outputs(bench, "attention", "attention.png")


def test_run_all_writes_results_md(
    bench: Bench,
    translation_json: dict[str, Any],
    summarization_json: dict[str, Any],
    speed_json: dict[str, Any],
    throughput_json: dict[str, Any],
    attention_json: dict[str, Any],
) -> None:
    output = bench.root / "RESULTS.md"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run_all",
            "--only",
            "attention",
            "--output",
            str(output),
            *bench.args(),
            "--attention-args",
            "--lengths 16 --repeats 1 --warmup 0 --no-backward --no-plots",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = output.read_text()
    for heading in (
        "## Translation: multi30k_en_de",
        "## Summarization: gigaword",
        "## Sampling speed",
        "## Training throughput",
        "## Attention",
    ):
        assert heading in text, heading
    assert "Produced by `python -m benchmarks.run_all" in text
    assert "Machine: " in text and "torch " in text
    run_all = json.loads((bench.results / "run_all.json").read_text())
    assert [s["stage"] for s in run_all["stages"]] == ["attention"]
    # report.py alone rewrites it from the JSON
    report.main(["--results-dir", str(bench.results), "--output", str(output), "--no-plots"])
    assert "## Translation: multi30k_en_de" in output.read_text()


def test_decode_memory_tiny_run(tmp_path: Path) -> None:
    from benchmarks import decode_memory

    with pytest.raises(SystemExit) as info:
        decode_memory.main(["--help"])
    assert info.value.code == 0
    tiny = ["--vocab", "300", "--source-tokens", "32", "--source-length", "8", "--dim", "16", "--heads", "2"]
    tiny += ["--layers", "1", "--steps", "2", "--length-beam", "3", "--noise-beam", "2", "--device", "cpu"]
    # a limit this small makes the unchunked decode run at fewer sources and be extrapolated to the full batch
    decode_memory.main([*tiny, "--unchunked-limit-gib", "0.0003", "--results-dir", str(tmp_path)])
    data = json.loads((tmp_path / "decode_memory.json").read_text())
    check_envelope(data, "decode_memory")
    assert data["settings"]["candidates_per_source"] == 6 and data["settings"]["source_tokens"] == 32
    rows = {(r["what"], r["chunking"], r["sources"], r["extrapolated"]): r for r in data["results"]}
    for what in ("sample", "generate"):
        full = rows[(what, "chunked", 4, False)]
        assert full["peak_rss_bytes"] >= 0 and full["candidates_per_source"] == 6
        measured = [r for (w, c, _, e), r in rows.items() if (w, c, e) == (what, "unchunked", False)]
        assert sorted(r["sources"] for r in measured) == [1, 2]  # two sizes for the linear fit
        assert all(r["same_output_as_chunked"] for r in measured)
        assert rows[(what, "unchunked", 4, True)]["positions"] == full["positions"]
    assert rows[("sample", "chunked", 4, False)]["positions"] == 4 * 6 * 8
    md = (tmp_path / "decode_memory.md").read_text()
    assert (
        md.startswith("### Decode memory")
        and "*extrapolated*" in md
        and "Command: `python -m benchmarks." in md
    )


def test_the_references_unseen_word_count_covers_the_first_scored_pairs(tmp_path: Path) -> None:
    from benchmarks.quality import references_unseen_words

    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text(json.dumps({"src": "a", "tgt": "Ein Mann."}) + "\n", encoding="utf-8")
    pairs = [("x", "Ein Hund."), ("", "Ein Vogel."), ("y", "Ein Mann."), ("z", "Ein Fisch.")]  # the empty source: skipped
    test.write_text("".join(json.dumps({"src": s, "tgt": t}) + "\n" for s, t in pairs), encoding="utf-8")
    assert references_unseen_words(test, train, used=2) == 1  # "Ein Hund.", "Ein Mann."
    assert references_unseen_words(test, train, used=3) == 2
    assert references_unseen_words(test, tmp_path / "missing.jsonl", used=3) is None


def test_the_unseen_word_count_reads_the_tasks_own_training_references(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text(
        json.dumps({"src": "A man.", "tgt": "Ein Mann."}) + "\n" + json.dumps({"src": "A dog", "tgt": "Ein Hund"}) + "\n",
        encoding="utf-8",
    )
    assert reference_vocabulary(train) == frozenset({"Ein", "Mann", ".", "Hund"})  # targets only, 13a words
    assert reference_vocabulary(tmp_path / "missing.jsonl") is None


def test_rescore_recounts_stored_hypotheses_against_the_training_references(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import rescore

    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"src": "a", "tgt": "Ein Mann im Park."}) + "\n", encoding="utf-8")
    refs = ["Ein Mann im Park.", "Ein Hund im Park."]  # "Hund" is new: one reference of two
    run = tmp_path / "seqdiffuseq-distilled"
    run.mkdir()
    hyps = run / "hypotheses_noise beam 10.jsonl"
    rows = [
        {"index": 0, "source": "x", "hypothesis": "Ein Mann im Park.", "reference": refs[0]},
        {"index": 1, "source": "x", "hypothesis": "Ein Mannim im im Park.", "reference": refs[1]},
    ]
    hyps.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (record,) = rescore.main([str(hyps), "--train", str(train), "--out", str(tmp_path / "r.json")])
    assert record["label"] == "seqdiffuseq-distilled/noise beam 10" and record["sentences"] == 2
    assert record["unseen_word_hypotheses"] == 1 and record["repeated_word_hypotheses"] == 1
    assert record["unseen_word_hypotheses_rate"] == 0.5 and record["references_unseen_words"] == 1
    out = capsys.readouterr().out
    assert "| seqdiffuseq-distilled/noise beam 10 | 2 |" in out and out.rstrip().endswith("| 1 (50.0%) | 1 (50.0%) |")
    assert json.loads((tmp_path / "r.json").read_text())["records"][0]["unseen_word_hypotheses"] == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"hypothesis": "x", "source": "y"}', ":2: no string field 'reference'"),
        ("not json", ":2: not valid JSON"),
        ('["a list"]', ":2: expected a JSON object, got list"),
    ],
)
def test_rescore_names_the_file_and_line_of_a_bad_row(tmp_path: Path, line: str, message: str) -> None:
    from benchmarks import rescore

    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"src": "a", "tgt": "b"}) + "\n", encoding="utf-8")
    hyps = tmp_path / "hypotheses_recipe.jsonl"
    good = json.dumps({"source": "a", "hypothesis": "b", "reference": "b"})
    hyps.write_text(good + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=f"hypotheses_recipe.jsonl{message}"):
        rescore.main([str(hyps), "--train", str(train)])
