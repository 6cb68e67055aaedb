"""Every recipe parses, trains two tiny steps, validates its checkpoint; the CPU overlay composes with it.

Recipes are discovered under ``recipes/`` (overlays excluded), so a new recipe file is tested automatically.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import yaml
from conftest import OVERLAYS_DIR, RECIPES_DIR

RECIPES = sorted(p for p in RECIPES_DIR.rglob("*.yaml") if OVERLAYS_DIR not in p.parents)
OVERLAYS = sorted(OVERLAYS_DIR.glob("*.yaml"))
IDS = [p.relative_to(RECIPES_DIR).as_posix() for p in RECIPES]
# The model class each CPU overlay is written for (their sized parts differ: latent width, sampler, network).
OVERLAY_MODEL = {
    "cpu_small.yaml": "DiffusionLM",
    "cpu_small_autoregressive.yaml": "AutoregressiveLM",
    "cpu_small_discrete.yaml": "DiscreteDiffusionLM",
}


def sized_part(config: dict) -> str:
    """The model part a recipe or overlay sizes: ``denoiser`` (DiffusionLM) or ``network`` (AutoregressiveLM)."""
    init_args = (config.get("model") or {}).get("init_args") or {}
    return "network" if "network" in init_args and "denoiser" not in init_args else "denoiser"


def test_recipes_are_found() -> None:
    assert RECIPES_DIR / "quickstart.yaml" in RECIPES
    assert not any("overlays" in p.parts for p in RECIPES)
    assert sorted(OVERLAY_MODEL) == [p.name for p in OVERLAYS]


def print_config(run_cli, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    """``fit <args> --print_config`` in-process -> the printed config as a dict."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", *args, "--print_config"])
    out = capsys.readouterr().out
    assert exit_info.value.code in (0, None), out
    return yaml.safe_load(out)


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_recipe_print_config(recipe: Path, capsys: pytest.CaptureFixture[str], run_cli) -> None:
    config = print_config(run_cli, capsys, "-c", str(recipe))
    part = sized_part(config)
    assert config["model"]["class_path"].endswith("DiffusionLM" if part == "denoiser" else "AutoregressiveLM")
    assert "class_path" in config["model"]["init_args"][part]
    assert config["data"]["class_path"].endswith("Seq2SeqDataModule")
    assert config["trainer"]["max_steps"] > 0


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_overlay_composes(recipe: Path, overlay: Path, capsys: pytest.CaptureFixture[str], run_cli) -> None:
    base = yaml.safe_load(recipe.read_text())
    wanted = yaml.safe_load(overlay.read_text())
    part = sized_part(base)
    model_class = base["model"]["class_path"].rpartition(".")[2]
    if OVERLAY_MODEL[overlay.name] != model_class:
        pytest.skip(f"{overlay.name} is for {OVERLAY_MODEL[overlay.name]}, this recipe trains {model_class}")
    config = print_config(run_cli, capsys, "-c", str(recipe), "-c", str(overlay))
    model = config["model"]["init_args"]
    sized = model[part]["init_args"]
    for key, value in (wanted.get("model", {}).get("init_args", {}).get(part, {}).get("init_args") or {}).items():
        assert sized[key] == value, key
    assert config["trainer"]["accelerator"] == wanted["trainer"]["accelerator"]
    if overlay.name == "cpu_small.yaml":
        assert sized["hidden_dim"] == 128
        assert model["sampler"]["init_args"]["steps"] == 20
    # What the overlay does not mention stays as the recipe has it.
    assert config["model"]["init_args"][part]["class_path"] == base["model"]["init_args"][part]["class_path"]
    assert config["data"]["init_args"]["train_file"] == base["data"]["init_args"]["train_file"]


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_recipe_fit_then_validate(
    recipe: Path, tmp_path: Path, tiny_overrides, caplog: pytest.LogCaptureFixture, run_cli
) -> None:
    caplog.set_level(logging.INFO)
    overrides = tiny_overrides(tmp_path, recipe)
    cli = run_cli(["fit", "-c", str(recipe), *overrides])
    assert cli is not None
    assert cli.trainer.global_step == 2
    report = cli.model.last_report
    assert report.stage == "val" and report.step == 2
    assert isinstance(report.bleu, float) and 0.0 <= report.bleu <= 100.0
    assert "NFE" in report.settings
    sized = cli.model.denoiser if hasattr(cli.model, "denoiser") else cli.model.network
    assert sized.hidden_dim == 32  # the tiny overrides reached the model
    assert "[val @ step 2] BLEU" in caplog.text and "sacreBLEU signature" in caplog.text

    checkpoints = list(tmp_path.rglob("last.ckpt"))
    assert len(checkpoints) == 1, checkpoints
    ckpt = checkpoints[0]
    log_dir = ckpt.parent.parent
    assert (log_dir / "config.yaml").is_file()
    assert (log_dir / "tokenizer" / "tokenizer.json").is_file()

    cli = run_cli(["validate", "-c", str(recipe), *overrides, "--ckpt_path", str(ckpt)])
    assert cli is not None
    report = cli.model.last_report
    assert report.stage == "val"
    assert isinstance(report.bleu, float) and not math.isnan(report.bleu)
    assert "val/bleu" in cli.trainer.callback_metrics


# The first training loss of a recipe made tiny (seeded run, tiny data): a change to the objective, the noising,
# the timestep draw or the network's initialisation moves it. Pinned for the recipes whose objective others build on.
PINNED_FIRST_LOSS = {
    "difformer/multi30k_en_de.yaml": 8.4816,  # rounding and anchor heads over the 92 target ids of the tiny data
    "diffuseq/multi30k_en_de.yaml": 2.3449,  # shared up-projection + SourceMSE (the official DiffuSeq's objective), output vocabulary
    "cdcd/multi30k_en_de.yaml": 6.4157,
    "seqdiffuseq/multi30k_en_de.yaml": 1.4735,  # training noise factor 2 (not the paper's 1), self-conditioning coin per batch, output vocabulary
    "discrete/multi30k_en_de.yaml": 5.5485,  # glancing (the first pass decides how much of the target is seen), no label smoothing, softmax over the 92 target ids
}


@pytest.mark.parametrize("key", sorted(PINNED_FIRST_LOSS))
def test_recipe_first_loss_is_pinned(key: str, tmp_path: Path, tiny_overrides, run_cli) -> None:
    recipe = RECIPES_DIR / key
    extra = {"trainer.limit_val_batches": 0}
    cli = run_cli(["fit", "-c", str(recipe), *tiny_overrides(tmp_path, recipe, max_steps=1, extra=extra)])
    assert cli is not None and cli.trainer.global_step == 1
    assert cli.trainer.callback_metrics["train/loss"].item() == pytest.approx(PINNED_FIRST_LOSS[key], rel=1e-4)
