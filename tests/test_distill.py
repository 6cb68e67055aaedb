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


def test_shards_join_into_the_single_process_file(teacher: Path, tiny_data: TinyData, tmp_path: Path) -> None:
    """Batches dealt round-robin to 3 shards (64 lines, batches of 10: shard 0 holds batches 0, 3, 6), each shard
    resumable on its own; the last shard to finish joins them, line for line equal to one process's output."""
    module = load_pretrained(teacher)
    greedy = module.decoding.replace(search=GreedySearch())
    single = tmp_path / "single.jsonl"
    distill_file(module, teacher, tiny_data.train, single, greedy, batch_size=10)

    out = tmp_path / "sharded.jsonl"
    first = distill_file(module, teacher, tiny_data.train, out, greedy, batch_size=10, shard=0, num_shards=3)
    assert first["examples"] == 24 and not first["joined"] and not out.exists()  # batches 0, 3, 6: 10 + 10 + 4 lines
    shard_one = tmp_path / "sharded.jsonl.shard-1-of-3"
    distill_file(module, teacher, tiny_data.train, out, greedy, batch_size=10, shard=1, num_shards=3)
    lines = shard_one.read_text(encoding="utf-8").splitlines(keepends=True)
    shard_one.write_text("".join(lines[:13]) + lines[13][:5], encoding="utf-8")  # shard 1 killed mid-line 14
    shard_one.with_name(shard_one.name + ".provenance.json").write_text(
        shard_one.with_name(shard_one.name + ".provenance.json").read_text(encoding="utf-8").replace('"complete": true', '"complete": false'),
        encoding="utf-8",
    )
    last = distill_file(module, teacher, tiny_data.train, out, greedy, batch_size=10, shard=2, num_shards=3)
    assert not last["joined"]  # shard 1 is not complete
    resumed = distill_file(module, teacher, tiny_data.train, out, greedy, batch_size=10, shard=1, num_shards=3)
    assert resumed["resumed_at"] == [13] and resumed["joined"]
    assert out.read_text(encoding="utf-8") == single.read_text(encoding="utf-8")
    provenance = json.loads((tmp_path / "sharded.jsonl.provenance.json").read_text(encoding="utf-8"))
    assert provenance["complete"] and provenance["written"] == 64 and len(provenance["joined_from"]) == 3

    with pytest.raises(DistillError, match="written with another batch_size"):
        distill_file(module, teacher, tiny_data.train, out, greedy, batch_size=8, shard=1, num_shards=3)
    with pytest.raises(DistillError, match="--shard must be in 0..2"):
        distill_file(module, teacher, tiny_data.train, out, greedy, shard=3, num_shards=3)


def test_shard_flags_and_torchrun_environment(
    teacher: Path, tiny_data: TinyData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_diffusion.distill import launch_shard

    assert launch_shard(None, None) == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert launch_shard(None, None) == (2, 4) and launch_shard(1, 2) == (1, 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "out.jsonl"
    for rank in ("0", "1"):  # what two torchrun processes would do, one after the other
        monkeypatch.setenv("RANK", rank)
        main(["distill", str(teacher), str(tiny_data.train), str(out), "--batch_size", "16"])
    err = capsys.readouterr().err
    assert "shard 0 of 2 complete; other shards are still running" in err and "joined the 2 shards into" in err
    assert [row["src"] for row in rows(out)] == [row["src"] for row in tiny_data.pairs("train")]
