"""The discrete family through the commands: fit, export, load_pretrained, generate with discrete sampler flags."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import RECIPES_DIR, TinyData, fit_tiny

from lightning_diffusion import DiscreteDiffusionLM
from lightning_diffusion.cli import main
from lightning_diffusion.pretrained import export_pretrained, load_pretrained

RECIPE = RECIPES_DIR / "discrete" / "multi30k_en_de_spindle.yaml"  # its schedule keeps statistics: they must travel


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Path:
    root = tmp_path_factory.mktemp("discrete_cli")
    fit_tiny(root / "run", RECIPE, tiny_data, max_steps=4, val_check_interval=4)
    return export_pretrained(next((root / "run").rglob("last.ckpt")), root / "export")


def test_export_round_trips_the_model_and_its_statistics(exported: Path) -> None:
    model = load_pretrained(exported)
    assert isinstance(model, DiscreteDiffusionLM)
    assert model.schedule.fitted and model.schedule.information.numel() == model.vocab_size


def test_generate_takes_discrete_sampler_flags(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    main(["generate", str(exported), "--text+=I felt cheated.", "--text+=Tom is here.", "--sampler", "DiscreteAncestralSampler", "--steps", "4"])
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 2
    assert "DiscreteAncestralSampler(steps=4" in out.err
    found = re.findall(r"NFE: (\d+) network evaluations per candidate", out.err)
    assert found and 1 <= int(found[0]) <= 4  # calls made; unchanged steps reuse the last call
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(exported), "--text+=Hi.", "--sampler", "DDIMSampler"])
    message = f"{exit_info.value.code} {capsys.readouterr().err}"
    assert "discrete sampler" in message and "Traceback" not in message


def test_generate_takes_a_selection_flag(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    main(["generate", str(exported), "--text+=I felt cheated.", "--noise_beam", "2", "--selection", "ModelScoreSelection"])
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 1
    assert "the model's mean token log-probability over the 6 candidates" in out.err  # length beam 3 x noise beam 2
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(exported), "--text+=Hi.", "--noise_beam", "2", "--selection", "ModelScoreSelection", "--sampler", "TauLeapingSampler"])
    message = f"{exit_info.value.code} {capsys.readouterr().err}"
    assert "TauLeapingSampler gives none" in message and "Traceback" not in message


def test_probe_cli_runs_the_masking_probe(exported: Path, tiny_data: TinyData, tmp_path: Path) -> None:
    """`python -m benchmarks.probe` on a discrete model scores the one-shot prediction by corruption time."""
    import json

    from benchmarks import probe

    out = tmp_path / "probe.json"
    args = [str(exported), "--data", str(tiny_data.valid), "--examples", "8", "--times", "1.0,0.25,0.5", "--out", str(out)]
    assert probe.main(args) == out
    data = json.loads(out.read_text())
    assert data["model"]["class"] == "DiscreteDiffusionLM" and data["examples"] == 8
    assert [row["t"] for row in data["rows"]] == [0.25, 0.5, 1.0]
    full = data["rows"][-1]
    assert full["corrupted"] > 0 and full["accuracy_all"] == full["accuracy_corrupted"]  # t = 1: every position masked
    for row in data["rows"]:
        assert 0.0 <= row["accuracy_corrupted"] <= 1.0 and 0.0 <= row["accuracy_all"] <= 1.0
    assert "| t | corrupted positions |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit, match="--times"):
        probe.main([*args[:-4], "--times", "0,0.5", "--out", str(out)])
