"""Checkpoint safety and export: loading never unpickles arbitrary objects (a crafted checkpoint cannot run code
through any of the library's loading paths), export directories (config.yaml + model.safetensors + tokenizer/)
decode exactly like the checkpoint they came from, and a mismatched tokenizer is a clear error."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import RECIPES_DIR, TinyData, make_tiny_overrides

from lightning_diffusion import DiffusionLM
from lightning_diffusion.data import train_tokenizer
from lightning_diffusion.pretrained import (
    CheckpointError,
    export_pretrained,
    load_pretrained,
    read_checkpoint,
)

RECIPE = RECIPES_DIR / "quickstart.yaml"


class _TouchOnLoad:
    """Unpickling this object creates ``path``: proof that code ran while loading."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (pathlib.Path.touch, (self.path,))


def cli(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lightning_diffusion.cli", *map(str, args)],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Path:
    """A tiny 6-step quickstart fit validating every 2 steps; returns its log dir (checkpoints/last.ckpt,
    tokenizer/, config.yaml). BLEU stays flat at this size, so last.ckpt at step 6 shows it is rewritten at every
    validation, not only when the best score changes."""
    root = tmp_path_factory.mktemp("ckpt_fit")
    proc = cli("fit", "-c", RECIPE, *make_tiny_overrides(root / "run", RECIPE, data=tiny_data, max_steps=6, val_check_interval=2), cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ckpt,) = (root / "run").rglob("last.ckpt")
    return ckpt.parent.parent


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint-shaped file whose unpickling would create a marker file."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "x"}, "payload": _TouchOnLoad(marker)}, path)
    return path, marker


def test_read_checkpoint_refuses_a_crafted_file(crafted: tuple[Path, Path]) -> None:
    path, marker = crafted
    with pytest.raises(CheckpointError, match="refused to load.*weights-only") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_pretrained(path)
    assert not marker.exists()


def test_load_from_checkpoint_is_weights_only_by_default(crafted: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path, marker = crafted
    # torch's own default would unpickle anything under this variable: the library must not rely on it.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(Exception, match="Weights only load failed"):
        DiffusionLM.load_from_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["predict", "fit"])
def test_cli_refuses_a_crafted_checkpoint(command: str, crafted: tuple[Path, Path], run_dir: Path, tmp_path: Path) -> None:
    path, marker = crafted
    proc = cli(command, "-c", run_dir / "config.yaml", "--ckpt_path", path, "--trainer.default_root_dir", tmp_path / "out", cwd=tmp_path, env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert proc.returncode != 0
    assert "crafted.ckpt: refused to load" in proc.stderr and "weights-only" in proc.stderr
    assert not marker.exists()


def test_real_checkpoints_load_weights_only(run_dir: Path) -> None:
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 6
    model = DiffusionLM.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert model.vocab_size == 300


def predictions(log_root: Path) -> list[dict[str, str]]:
    (path,) = log_root.rglob("predictions.jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_directory_predicts_exactly_like_its_checkpoint(run_dir: Path, tmp_path: Path, tiny_data: TinyData) -> None:
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    proc = cli("export", ckpt, tmp_path / "exported", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = tmp_path / "exported"
    assert sorted(p.name for p in exported.iterdir()) == ["config.yaml", "export.json", "model.safetensors", "tokenizer"]
    metadata = json.loads((exported / "export.json").read_text())
    assert metadata["global_step"] == 6 and metadata["class_path"] == "lightning_diffusion.DiffusionLM"

    # Moved elsewhere, the directory still works on its own (no path back to the run or the data).
    moved = tmp_path / "elsewhere" / "model"
    shutil.move(str(exported), moved)
    inputs = tmp_path / "inputs.txt"
    sources = [row["src"] for row in tiny_data.pairs("test")[:5]]
    inputs.write_text("\n".join(sources) + "\n", encoding="utf-8")
    from_export = cli("predict", "-c", moved / "config.yaml", "--ckpt_path", moved, "--data.predict_file", inputs, "--trainer.default_root_dir", tmp_path / "p1", "--trainer.accelerator", "cpu", cwd=tmp_path)
    assert from_export.returncode == 0, from_export.stderr[-3000:]
    from_ckpt = cli("predict", "-c", run_dir / "config.yaml", "--ckpt_path", ckpt, "--data.predict_file", inputs, "--trainer.default_root_dir", tmp_path / "p2", cwd=tmp_path)
    assert from_ckpt.returncode == 0, from_ckpt.stderr[-3000:]
    a, b = predictions(tmp_path / "p1"), predictions(tmp_path / "p2")
    assert [row["source"] for row in a] == sources
    assert [row["hypothesis"] for row in a] == [row["hypothesis"] for row in b]

    # In Python: the same weights and tokenizer from the directory and from the checkpoint.
    model, reference = load_pretrained(moved), load_pretrained(ckpt)
    assert not model.training and model.tokenizer_fingerprint == reference.tokenizer_fingerprint
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)

    # `fit` cannot resume from weights only: a clear error, not a crash deep in Lightning.
    refused = cli("fit", "-c", run_dir / "config.yaml", "--ckpt_path", moved, cwd=tmp_path)
    assert refused.returncode != 0 and "export directory holds weights only" in refused.stderr


def test_export_directory_with_another_tokenizer_is_refused(run_dir: Path, tmp_path: Path, tiny_data: TinyData) -> None:
    exported = export_pretrained(run_dir / "checkpoints" / "last.ckpt", tmp_path / "exported")
    other = train_tokenizer([row["tgt"] for row in tiny_data.pairs("train")], 300)
    shutil.rmtree(exported / "tokenizer")
    other.save_pretrained(str(exported / "tokenizer"))
    with pytest.raises((CheckpointError, ValueError), match="tokenizer"):
        load_pretrained(exported)


def test_corrupt_weights_file_is_a_clear_error(run_dir: Path, tmp_path: Path) -> None:
    exported = export_pretrained(run_dir / "checkpoints" / "last.ckpt", tmp_path / "exported")
    (exported / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        load_pretrained(exported)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_pretrained(tmp_path / "missing.ckpt")


def test_base_class_reload_builds_the_subclass_named_in_the_checkpoint(tmp_path: Path, tiny_data: TinyData, monkeypatch: pytest.MonkeyPatch) -> None:
    helpers = Path(__file__).resolve().parent / "helpers"
    args = make_tiny_overrides(tmp_path / "run", RECIPE, data=tiny_data, max_steps=1, val_check_interval=1)
    proc = cli("fit", "-c", RECIPE, "--model", "run_probes.TaggedLM", *args, "--trainer.limit_val_batches", "0", cwd=tmp_path, env={"PYTHONPATH": str(helpers)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ckpt,) = (tmp_path / "run").rglob("last.ckpt")
    monkeypatch.syspath_prepend(str(helpers))
    import run_probes

    assert type(DiffusionLM.load_from_checkpoint(ckpt)) is run_probes.TaggedLM
    assert type(load_pretrained(ckpt)) is run_probes.TaggedLM


def test_autoregressive_export_with_tied_weights(tmp_path: Path, tiny_data: TinyData) -> None:
    """The baseline ties its output layer to the embedding: exported once, restored tied, same decoding."""
    recipe = RECIPES_DIR / "autoregressive" / "multi30k_en_de.yaml"
    args = make_tiny_overrides(tmp_path / "run", recipe, data=tiny_data, max_steps=2, val_check_interval=2)
    proc = cli("fit", "-c", recipe, *args, "--trainer.limit_val_batches", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ckpt,) = (tmp_path / "run").rglob("last.ckpt")
    exported = export_pretrained(ckpt, tmp_path / "exported")
    model, reference = load_pretrained(exported), load_pretrained(ckpt)
    tied = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    assert len(tied) > len(dict(model.named_parameters()))  # still shared after loading
    src = model.tokenizer(["Tom is here.", "I felt cheated."], return_tensors="pt", padding=True, add_special_tokens=False)
    mask = src.attention_mask.bool()
    assert model.generate(src.input_ids, mask).texts == reference.generate(src.input_ids, mask).texts


def test_failed_export_writes_nothing(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="tokenizer"):
        export_pretrained(run_dir / "checkpoints" / "last.ckpt", tmp_path / "out", tokenizer=tmp_path / "no_tokenizer")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left behind
