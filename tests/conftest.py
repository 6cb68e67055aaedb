"""Shared fixtures: single-threaded torch, a tiny JSONL dataset, and CLI overrides that make any recipe tiny."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO / "recipes"
OVERLAYS_DIR = RECIPES_DIR / "overlays"
RESOURCES = REPO / "lightning_diffusion" / "resources" / "tatoeba_en_es"

# Tiny shapes for the denoiser; only the names the recipe's denoiser class accepts are passed, so a recipe with
# another denoiser (e.g. encoder_layers/decoder_layers instead of num_layers) is made tiny as well.
TINY_DENOISER: dict[str, Any] = {
    "hidden_dim": 32,
    "num_layers": 1,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "num_heads": 2,
    "ffn_dim": 64,
    "latent_dim": 16,
}

# Extra CLI arguments for one recipe (key: path relative to recipes/, e.g. "difformer/wmt14.yaml").
RECIPE_EXTRAS: dict[str, list[str]] = {}


@pytest.fixture(autouse=True, scope="session")
def _single_thread() -> None:
    """Tiny models run much faster single-threaded on a loaded 2-core box."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _keep_denormals() -> Iterable[None]:
    """In-process ``main([...])`` calls must not flip the CPU's flush-to-zero mode for the rest of the session
    (property tests draw subnormal floats); ``tests/test_denormals.py`` tests the flushing itself."""
    from lightning_diffusion.denormals import ENV

    before = os.environ.get(ENV)
    os.environ[ENV] = "keep"
    yield
    if before is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = before


@dataclass(frozen=True)
class TinyData:
    """Paths of the tiny dataset (short Tatoeba en->es pairs) and a shared tokenizer cache."""

    root: Path
    train: Path
    valid: Path
    test: Path
    cache: Path

    def pairs(self, split: str) -> list[dict[str, str]]:
        path = {"train": self.train, "valid": self.valid, "test": self.test}[split]
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    def sentences(self) -> list[str]:
        return [text for row in self.pairs("train") for text in (row["src"], row["tgt"])]


def _short_pairs(split: str, count: int) -> list[dict[str, str]]:
    """The first ``count`` short pairs of a bundled split (deterministic)."""
    rows = []
    with (RESOURCES / f"{split}.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if len(row["src"]) <= 40 and len(row["tgt"]) <= 45:
                rows.append({"src": row["src"], "tgt": row["tgt"]})
                if len(rows) == count:
                    break
    assert len(rows) == count
    return rows


def write_jsonl(path: Path, rows: Iterable[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    """64 train / 16 valid / 16 test short pairs (read-only; tests must not modify them)."""
    root = tmp_path_factory.mktemp("tiny_data")
    return TinyData(
        root=root,
        train=write_jsonl(root / "train.jsonl", _short_pairs("train", 64)),
        valid=write_jsonl(root / "valid.jsonl", _short_pairs("valid", 16)),
        test=write_jsonl(root / "test.jsonl", _short_pairs("test", 16)),
        cache=root / "tokenizer_cache",
    )


@pytest.fixture
def tiny_datamodule(tiny_data: TinyData) -> Any:
    """A Seq2SeqDataModule over the tiny files (vocabulary 300, small batches)."""
    from lightning_diffusion.data import Seq2SeqDataModule

    return Seq2SeqDataModule(
        train_file=str(tiny_data.train),
        val_file=str(tiny_data.valid),
        test_file=str(tiny_data.test),
        predict_file=str(tiny_data.test),
        tokenizer_vocab_size=300,
        tokenizer_cache_dir=str(tiny_data.cache),
        max_tokens=256,
    )


def _sized_part(recipe: Path | None) -> tuple[str, type | None]:
    """The model part the tiny sizes go to and its class: ``("denoiser", cls)`` from
    ``model.init_args.denoiser.class_path`` or, for a model without a denoiser (the autoregressive baseline),
    ``("network", cls)`` from ``model.init_args.network.class_path``; the class is None if not found."""
    if recipe is None:
        return "denoiser", None
    config = yaml.safe_load(Path(recipe).read_text()) or {}
    model = config.get("model") or {}
    init_args = model.get("init_args") or model
    part = "denoiser" if "denoiser" in init_args or "network" not in init_args else "network"
    spec = init_args.get(part) or {}
    class_path = spec.get("class_path") if isinstance(spec, dict) else None
    if not class_path or "." not in class_path:
        return part, None
    module_name, _, name = class_path.rpartition(".")
    return part, getattr(importlib.import_module(module_name), name, None)


def _denoiser_class(recipe: Path | None) -> type | None:
    """The class named by ``model.init_args.denoiser.class_path`` in ``recipe`` (None if not found)."""
    part, cls = _sized_part(recipe)
    return cls if part == "denoiser" else None


def _recipe_key(recipe: Path | None) -> str | None:
    if recipe is None:
        return None
    try:
        return Path(recipe).resolve().relative_to(RECIPES_DIR).as_posix()
    except ValueError:
        return None


def make_tiny_overrides(
    root: Path,
    recipe: str | Path | None = None,
    *,
    data: TinyData,
    max_steps: int = 2,
    val_check_interval: int = 2,
    extra: dict[str, Any] | None = None,
) -> list[str]:
    """CLI arguments that make a recipe tiny and point it at the tiny data; runs write under ``root``."""
    recipe_path = Path(recipe) if recipe is not None else None
    part, cls = _sized_part(recipe_path)
    accepted = set(inspect.signature(cls.__init__).parameters) if cls is not None else None
    args: list[str] = []
    for key, value in TINY_DENOISER.items():
        if accepted is None and key in ("encoder_layers", "decoder_layers"):
            continue  # no class to ask: assume the DiffuSeq-style names
        if accepted is not None and key not in accepted:
            continue
        args += [f"--model.{part}.{key}", str(value)]
    options: dict[str, Any] = {
        **({"model.sampler.steps": 3} if part == "denoiser" else {}),
        "data.train_file": data.train,
        "data.val_file": data.valid,
        "data.test_file": data.test,
        "data.predict_file": data.test,
        "data.tokenizer_vocab_size": 300,
        "data.max_tokens": 256,
        "data.tokenizer_cache_dir": data.cache,
        "trainer.max_steps": max_steps,
        "trainer.val_check_interval": val_check_interval,
        "trainer.limit_val_batches": 1,
        "trainer.num_sanity_val_steps": 0,
        "trainer.log_every_n_steps": 1,
        "trainer.enable_progress_bar": "false",
        "trainer.accelerator": "cpu",
        "trainer.default_root_dir": root,
        **(extra or {}),
    }
    for key, value in options.items():
        args += [f"--{key}", str(value)]
    return args + RECIPE_EXTRAS.get(_recipe_key(recipe_path) or "", [])


def fit_tiny(root: Path, recipe: Path, data: TinyData, **options: Any) -> Any:
    """``lightning-diffusion fit -c recipe`` made tiny (see :func:`make_tiny_overrides`), in this process, writing
    under ``root``; returns the CLI object (for module-scoped fixtures, where ``run_cli`` is not available)."""
    from lightning_diffusion.cli import main

    overrides = make_tiny_overrides(root, recipe, data=data, **options)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["lightning-diffusion"])
        cli = main(["fit", "-c", str(recipe), *overrides])
    assert cli is not None
    return cli


@pytest.fixture
def tiny_overrides(tiny_data: TinyData) -> Callable[..., list[str]]:
    """``tiny_overrides(root, recipe=None, max_steps=2, val_check_interval=2, extra={...})`` -> CLI args."""
    return functools.partial(make_tiny_overrides, data=tiny_data)


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], Any]:
    """``lightning_diffusion.cli.main`` in-process, with ``sys.argv`` cleared (LightningCLI warns when both
    ``args`` and command-line arguments are present)."""
    from lightning_diffusion.cli import main

    monkeypatch.setattr(sys, "argv", ["lightning-diffusion"])
    return main


@pytest.fixture(scope="module")
def tok(tiny_data: TinyData) -> Any:
    """A byte-level BPE (300 tokens) trained on the tiny dataset."""
    from lightning_diffusion.data import train_tokenizer

    return train_tokenizer(tiny_data.sentences(), 300)


@pytest.fixture
def batch(tok: Any, tiny_data: TinyData) -> Any:
    """A collated batch of the first 4 tiny training pairs."""
    from lightning_diffusion.data import TokenizedExample, collate_examples

    examples = [
        TokenizedExample(
            index=i,
            src_ids=tok(p["src"], add_special_tokens=False)["input_ids"],
            tgt_ids=tok(p["tgt"], add_special_tokens=False)["input_ids"],
            src_text=p["src"],
            tgt_text=p["tgt"],
        )
        for i, p in enumerate(tiny_data.pairs("train")[:4])
    ]
    return collate_examples(examples, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
