"""``lightning-diffusion distill``: a tiny autoregressive teacher decodes the tiny training file into {src, tgt}
JSONL in input order with a provenance sidecar; a run stopped mid-file resumes without losing or repeating a line;
resuming with other settings, or over a file distill did not write, is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import RECIPES_DIR, TinyData, fit_tiny

from lightning_diffusion.autoregressive import BeamSearch, GreedySearch
from lightning_diffusion.cli import main
from lightning_diffusion.distill import DistillError, complete_lines, distill_file
from lightning_diffusion.pretrained import load_pretrained

RECIPE = RECIPES_DIR / "autoregressive" / "multi30k_en_de.yaml"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Path:
    root = tmp_path_factory.mktemp("teacher")
    fit_tiny(root / "run", RECIPE, tiny_data, max_steps=4, val_check_interval=4)
    return next((root / "run").rglob("last.ckpt"))


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_distill_writes_every_source_in_order_with_provenance(
    teacher: Path, tiny_data: TinyData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "distilled.jsonl"
    main(["distill", str(teacher), str(tiny_data.train), str(out), "--search", "BeamSearch", "--search.beam_size", "2", "--batch_size", "16"])
    written = rows(out)
    sources = [row["src"] for row in tiny_data.pairs("train")]
    assert [row["src"] for row in written] == sources
    assert all(set(row) == {"src", "tgt"} and isinstance(row["tgt"], str) for row in written)
    provenance = json.loads((tmp_path / "distilled.jsonl.provenance.json").read_text(encoding="utf-8"))
    assert provenance["complete"] and provenance["written"] == provenance["examples"] == len(sources)
    assert provenance["decoding"].startswith("BeamSearch(beam=2") and len(provenance["teacher_sha256"]) == 64
    assert len(provenance["input_sha256"]) == 64 and provenance["tokenizer_fingerprint"]
    assert "wrote 64 examples" in capsys.readouterr().err

    # The distilled file trains a student (the data module reads it as a training file).
    from lightning_diffusion.data import Seq2SeqDataModule

    dm = Seq2SeqDataModule(train_file=str(out), tokenizer_vocab_size=300, tokenizer_cache_dir=str(tiny_data.cache))
    dm.setup("fit")
    assert len(dm.datasets["train"]) >= len(sources) - sum(not row["tgt"].strip() for row in written)


def test_a_stopped_run_resumes_without_losing_or_repeating_lines(teacher: Path, tiny_data: TinyData, tmp_path: Path) -> None:
    module = load_pretrained(teacher)
    greedy = module.decoding.replace(search=GreedySearch())
    full = tmp_path / "full.jsonl"
    distill_file(module, teacher, tiny_data.train, full, greedy, batch_size=8)

    part = tmp_path / "part.jsonl"
    distill_file(module, teacher, tiny_data.train, part, greedy, batch_size=8)
    lines = part.read_text(encoding="utf-8").splitlines(keepends=True)
    part.write_text("".join(lines[:19]) + lines[19][:7], encoding="utf-8")  # killed while writing line 20
    assert complete_lines(part) == 19 and part.read_text(encoding="utf-8").endswith("\n")
    record = distill_file(module, teacher, tiny_data.train, part, greedy, batch_size=8)
    assert part.read_text(encoding="utf-8") == full.read_text(encoding="utf-8")
    assert record["resumed_at"] == [19] and record["complete"]

    with pytest.raises(DistillError, match="written with another decoding"):
        distill_file(module, teacher, tiny_data.train, part, module.decoding.replace(search=BeamSearch(3)))
    stranger = tmp_path / "stranger.jsonl"
    stranger.write_text('{"src": "a", "tgt": "b"}\n', encoding="utf-8")
    with pytest.raises(DistillError, match="not written by distill"):
        distill_file(module, teacher, tiny_data.train, stranger, greedy)


def test_bad_arguments_are_one_line_errors(teacher: Path, tiny_data: TinyData, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no such file"):
        main(["distill", str(teacher), str(tmp_path / "missing.jsonl"), str(tmp_path / "out.jsonl")])
    with pytest.raises(SystemExit, match="no such export directory or checkpoint"):
        main(["distill", str(tmp_path / "nope.ckpt"), str(tiny_data.train), str(tmp_path / "out.jsonl")])
    with pytest.raises(SystemExit, match="--steps apply to diffusion models"):
        main(["distill", str(teacher), str(tiny_data.train), str(tmp_path / "out.jsonl"), "--steps", "3"])
