"""``python -m benchmarks.solvers``: BLEU against NFE per sampler and against the classifier-free guidance scale for
one trained model, written as JSON and markdown; guidance is skipped with a note for a model without a null condition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import RECIPES_DIR, TinyData, fit_tiny

RECIPE = RECIPES_DIR / "quickstart.yaml"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("solvers")
    fit_tiny(root / "plain", RECIPE, tiny_data, max_steps=2, val_check_interval=2)
    fit_tiny(root / "cfg", RECIPE, tiny_data, max_steps=2, val_check_interval=2, extra={"model.condition_dropout": 0.5})
    return {name: next((root / name).rglob("last.ckpt")) for name in ("plain", "cfg")}


def test_solver_and_guidance_sweeps(checkpoints: dict[str, Path], tiny_data: TinyData, tmp_path: Path) -> None:
    from benchmarks import solvers

    out = tmp_path / "solvers.json"
    args = [str(checkpoints["cfg"]), "--data", str(tiny_data.valid), "--examples", "6", "--samplers", "DDIMSampler,DPMSolverPP"]
    assert solvers.main([*args, "--steps", "1,3", "--guidance", "1,2", "--out", str(out)]) == out
    data = json.loads(out.read_text())
    assert data["benchmark"] == "solvers" and data["examples"] == 6 and data["model"]["condition_dropout"] == 0.5
    assert [(r["sampler"], r["steps"], r["nfe"]) for r in data["solver_rows"]] == [
        ("DDIMSampler", 1, 1.0), ("DDIMSampler", 3, 3.0), ("DPMSolverPP", 1, 1.0), ("DPMSolverPP", 3, 3.0)
    ]  # fmt: skip
    steps = data["settings"]["guidance_steps"]
    assert [(r["scale"], r["nfe"]) for r in data["guidance_rows"]] == [(1.0, steps), (2.0, 2 * steps)]  # both branches
    assert "DPMSolverPP(steps=3" in data["solver_rows"][-1]["settings"]
    assert "classifier-free guidance w=2" in data["guidance_rows"][1]["settings"]
    for row in data["solver_rows"] + data["guidance_rows"]:
        assert 0.0 <= row["bleu"] <= 100.0 and row["bleu_signature"].startswith("nrefs:1")
    markdown = out.with_suffix(".md").read_text()
    assert "BLEU against NFE" in markdown and "classifier-free guidance scale" in markdown


def test_guidance_is_skipped_without_a_null_condition(checkpoints: dict[str, Path], tiny_data: TinyData, tmp_path: Path) -> None:
    from benchmarks import solvers

    out = tmp_path / "plain.json"
    solvers.main([str(checkpoints["plain"]), "--data", str(tiny_data.valid), "--examples", "4", "--samplers", "AncestralSampler", "--steps", "2", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["guidance_rows"] == [] and "condition_dropout 0.0" in data["guidance_note"]
    assert "Guidance: skipped" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit, match="unknown sampler 'NoSuchSampler'"):
        solvers.main([str(checkpoints["plain"]), "--data", str(tiny_data.valid), "--samplers", "NoSuchSampler", "--out", str(out)])
