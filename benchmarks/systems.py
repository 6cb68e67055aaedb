"""What the quality benchmarks train: tasks (data files, metric) and systems (recipe + overlays + CLI args).

A *system* is data, not code: a recipe pattern, overlays, extra CLI arguments and the decoding variants to
score. The default list has the diffusion families (CDCD among them) and the autoregressive baseline; a JSON file with
the same fields (``--systems-file``) replaces it, e.g. to add a family or change the CPU-scale settings.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_DATA_ROOT, REPO, read_json


@dataclass(frozen=True)
class Task:
    """A dataset and how it is scored.

    Attributes:
        name: also the recipe file stem (``recipes/<family>/<name>.yaml``).
        kind: ``translation`` (BLEU) or ``summarization`` (ROUGE).
        data_dir: directory under the data root.
        train, valid, test: file names in ``data_dir`` (Gigaword's sample has no test split: valid is the test).
        fallback_recipe: recipe stem used when a family has no recipe for this task (data paths are overridden).
        args: extra CLI arguments for every system on this task.
        system_args: extra CLI arguments per system name on this task.
        note: printed with the results; it describes the task, not the files: the files actually read, their
            sizes and how many test examples were scored are printed from the run.
        test_name: what the standard test file of the task is (e.g. ``test_2016_flickr``), printed with the file
            scored only when that file has ``test_size`` examples.
        test_size: examples in the standard test file (None: any size).
    """

    name: str
    kind: str
    data_dir: str
    train: str
    valid: str
    test: str
    fallback_recipe: str | None = None
    args: tuple[str, ...] = ()
    system_args: dict[str, tuple[str, ...]] = field(default_factory=dict)
    note: str = ""
    test_name: str = ""
    test_size: int | None = None

    @property
    def metric(self) -> str:
        return "bleu" if self.kind == "translation" else "rougeL"

    def files(self, data_root: Path) -> dict[str, Path]:
        root = Path(data_root) / self.data_dir
        return {"train": root / self.train, "valid": root / self.valid, "test": root / self.test}


TASKS: dict[str, Task] = {
    "multi30k_en_de": Task(
        "multi30k_en_de",
        "translation",
        "multi30k_en_de",
        "train.jsonl",
        "valid.jsonl",
        "test.jsonl",
        note="Multi30k En->De",
        test_name="Multi30k test_2016_flickr",
        test_size=1000,
    ),
    "iwslt14_de_en": Task(
        "iwslt14_de_en",
        "translation",
        "iwslt14_de_en",
        "train_sample.jsonl",
        "valid.jsonl",
        "test.jsonl",
        fallback_recipe="multi30k_en_de",
        note="IWSLT14 De->En: a training sample (not the full 160k pairs), lowercased fairseq-style text",
        test_name="the standard fairseq IWSLT14 De-En test set (lowercased)",
        test_size=6750,
    ),
    "gigaword": Task(
        "gigaword",
        "summarization",
        "gigaword",
        "train.jsonl",
        "valid.jsonl",
        "valid.jsonl",
        note="Gigaword training sample; the valid sample is the test set (not the standard 1,951-pair test set)",
        test_name="the Gigaword valid sample",
        test_size=500,
    ),
    "dialogsum": Task(
        "dialogsum",
        "summarization",
        "dialogsum",
        "train.jsonl.gz",
        "valid.jsonl",
        "test.jsonl",
        fallback_recipe="gigaword",
        # Dialogues are long: longer sources and summaries than the Gigaword recipes they borrow.
        args=("--data.max_src_len", "160", "--data.max_tgt_len", "64", "--model.max_length", "64"),
        system_args={"seqdiffuseq": ("--model.schedule.max_length", "64")},
        note="DialogSum (Gigaword recipes with 160-token sources, 64-token summaries); scored against the "
        "first reference (summary1) only",
        test_name="the DialogSum test set",
        test_size=500,
    ),
}


@dataclass(frozen=True)
class System:
    """One trained model configuration.

    Attributes:
        name: short name (run directory, table row).
        family: diffuseq | seqdiffuseq | difformer | discrete | autoregressive (or your own).
        recipe: recipe path pattern relative to the repository, ``{task}`` filled in.
        overlays: further ``-c`` files after the recipe.
        args: extra CLI arguments (layer counts, beams).
        decodings: name -> attribute overrides applied to the loaded module before decoding
            (``{"sampler.steps": 50}``, ``{"search": {"class_path": ..., "init_args": {...}}}``); the first
            one is the system's primary decoding (curves, speed tables).
        requires: importable names the system needs (checked before training).
    """

    name: str
    family: str
    recipe: str
    overlays: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    decodings: dict[str, dict[str, Any]] = field(default_factory=lambda: {"recipe": {}})
    requires: tuple[str, ...] = ()

    def resolve_recipe(self, task: Task, repo: Path = REPO) -> tuple[Path | None, bool]:
        """``(recipe path, fallback used)``; None when neither the task's nor the fallback recipe exists."""
        path = repo / self.recipe.format(task=task.name)
        if path.is_file():
            return path, False
        if task.fallback_recipe:
            path = repo / self.recipe.format(task=task.fallback_recipe)
            if path.is_file():
                return path, True
        return None, False

    def unavailable(self, task: Task, repo: Path = REPO) -> str | None:
        """Why this system cannot run on ``task`` here (missing recipe, overlay or class), else None."""
        recipe, _ = self.resolve_recipe(task, repo)
        if recipe is None:
            return f"no recipe {self.recipe.format(task=task.name)}"
        for overlay in self.overlays:
            if not (repo / overlay).is_file():
                return f"overlay {overlay} not found"
        for name in self.requires:
            module_name, _, attr = name.rpartition(".")
            try:
                getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as err:
                return f"{name} not importable ({err})"
        return None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["overlays"], data["args"], data["requires"] = (
            list(self.overlays),
            list(self.args),
            list(self.requires),
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> System:
        data = dict(data)
        for key in ("overlays", "args", "requires"):
            data[key] = tuple(data.get(key, ()))
        data.setdefault("decodings", {"recipe": {}})
        return cls(**data)


CPU_SMALL = "recipes/overlays/cpu_small.yaml"
CPU_SMALL_AR = "recipes/overlays/cpu_small_autoregressive.yaml"
CPU_SMALL_DISCRETE = "recipes/overlays/cpu_small_discrete.yaml"
ENC_DEC_LAYERS = ("--model.denoiser.encoder_layers", "3", "--model.denoiser.decoder_layers", "3")
# The recipe's decoding (primary: curves, speed), and the same with runs of one token collapsed (an optional
# post-process against repeated words, scored beside the plain output so its effect is visible).
DIFFUSION_DECODINGS: dict[str, dict[str, Any]] = {"recipe": {}, "collapse repeats": {"collapse_repeats": True}}
# Canvas models (DiffuSeq, SeqDiffuSeq): their papers decode 10 samples per source and pick one by MBR; the CPU
# overlay decodes one (validation during training stays cheap), so the benchmarks also score the papers' 10
# (each such decoding takes 13-16x the single sample's time).
CANVAS_DECODINGS: dict[str, dict[str, Any]] = {
    **DIFFUSION_DECODINGS,
    "noise beam 10": {"noise_beam": 10},
    "noise beam 10 + collapse repeats": {"noise_beam": 10, "collapse_repeats": True},
}
# Difformer's recipe rounds with a repeat penalty; also report the plain argmax and the collapse post-process on it.
DIFFORMER_DECODINGS: dict[str, dict[str, Any]] = {
    "recipe": {},
    "argmax rounding": {"repeat_penalty": 0.0},
    "argmax + collapse repeats": {"repeat_penalty": 0.0, "collapse_repeats": True},
}

SYSTEMS: list[System] = [
    System(
        "diffuseq",
        "diffuseq",
        "recipes/diffuseq/{task}.yaml",
        (CPU_SMALL,),
        ("--model.denoiser.num_layers", "3"),
        decodings=CANVAS_DECODINGS,
    ),
    System(
        "seqdiffuseq",
        "seqdiffuseq",
        "recipes/seqdiffuseq/{task}.yaml",
        (CPU_SMALL,),
        ENC_DEC_LAYERS,
        decodings=CANVAS_DECODINGS,
    ),
    System(
        "difformer",
        "difformer",
        "recipes/difformer/{task}.yaml",
        (CPU_SMALL,),
        (*ENC_DEC_LAYERS, "--model.length_beam", "3"),
        decodings=DIFFORMER_DECODINGS,
    ),
    System(
        "cdcd",
        "cdcd",
        "recipes/cdcd/{task}.yaml",  # Multi30k only (IWSLT14 falls back to it; no Gigaword recipe: skipped there)
        (CPU_SMALL,),
        (*ENC_DEC_LAYERS, "--model.length_beam", "3"),
        decodings=DIFFUSION_DECODINGS,
        requires=("lightning_diffusion.denoisers.ScoreInterpolationDenoiser",),
    ),
    System(
        "discrete",
        "discrete",
        "recipes/discrete/{task}.yaml",
        (CPU_SMALL_DISCRETE,),
        ENC_DEC_LAYERS,
        # The recipe's decoding (10 steps), then the BLEU-vs-steps curve of the issue: 4, 8, 16, 32 steps.
        decodings={
            **DIFFUSION_DECODINGS,
            **{f"{k} steps": {"steps": k} for k in (4, 8, 16, 32)},
        },
        requires=("lightning_diffusion.DiscreteDiffusionLM",),
    ),
    System(
        "autoregressive",
        "autoregressive",
        "recipes/autoregressive/{task}.yaml",
        (CPU_SMALL_AR,),
        ("--model.network.encoder_layers", "3", "--model.network.decoder_layers", "3"),
        decodings={
            "greedy": {"search": {"class_path": "lightning_diffusion.autoregressive.GreedySearch"}},
            "beam4": {
                "search": {
                    "class_path": "lightning_diffusion.autoregressive.BeamSearch",
                    "init_args": {"beam_size": 4},
                }
            },
        },
        requires=("lightning_diffusion.autoregressive.AutoregressiveLM",),
    ),
]


def load_systems(path: str | Path | None) -> list[System]:
    """The default systems, or those of a JSON file (a list of :class:`System` fields)."""
    if path is None:
        return list(SYSTEMS)
    return [System.from_dict(item) for item in read_json(Path(path))]


def select(systems: list[System], names: str | None) -> list[System]:
    """Keep the comma-separated ``names`` (all when None), in the given order."""
    if not names:
        return systems
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    by_name = {s.name: s for s in systems}
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise SystemExit(f"unknown systems {missing}; known: {sorted(by_name)}")
    return [by_name[n] for n in wanted]


def data_root_default() -> Path:
    return DEFAULT_DATA_ROOT
