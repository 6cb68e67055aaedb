"""DDP with 2 CPU processes (gloo) through the real CLI: training keeps the adaptive-schedule statistics and the
loss-aware timestep history identical on both ranks (reduced / gathered every step, nothing lost), and prediction
writes every input exactly once, in input order, with the same hypotheses as a single process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RECIPES_DIR, TinyData, make_tiny_overrides

RECIPE = RECIPES_DIR / "seqdiffuseq" / "multi30k_en_de.yaml"
HELPERS = Path(__file__).resolve().parent / "helpers"
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "lightning_diffusion.cli", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=400,
    )


def overlay(path: Path, record_dir: Path) -> Path:
    config: dict[str, Any] = {
        "trainer": {
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
                {"class_path": "run_probes.BatchRecorder", "init_args": {"directory": str(record_dir)}},
                {"class_path": "run_probes.DumpTrainingState", "init_args": {"directory": str(record_dir)}},
                {"class_path": "lightning_diffusion.callbacks.PredictionWriter"},
            ]
        },
        "model": {
            "init_args": {
                "schedule": {
                    "class_path": "lightning_diffusion.schedules.AdaptiveSchedule",
                    "init_args": {"num_steps": 20, "max_length": 40, "num_bins": 5, "refit_every": 4, "refit_warmup": 4},
                },
                "timestep_sampler": {"class_path": "lightning_diffusion.timesteps.LossAwareTimestepSampler", "init_args": {"history": 2}},
                "noise_beam": 2,
            }
        },
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def test_ddp_two_cpu_processes_train_and_predict_through_the_cli(tmp_path: Path, tiny_data: TinyData) -> None:
    record = tmp_path / "record"
    common = ["-c", RECIPE, "-c", overlay(tmp_path / "overlay.yaml", record)]
    tiny = make_tiny_overrides(tmp_path / "run", RECIPE, data=tiny_data, max_steps=6, val_check_interval=6)
    fit = cli("fit", *common, *tiny, *DDP, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-4000:]

    rows = [json.loads(line) for rank in (0, 1) for line in (record / f"rank{rank}.jsonl").read_text().splitlines()]
    assert {row["rank"] for row in rows} == {0, 1}
    assert sorted(row["step"] for row in rows if row["rank"] == 0) == list(range(1, 7))
    # The two ranks trained on different batches of the same epoch.
    first_epoch = [i for row in rows if row["epoch"] == 0 for i in row["index"]]
    assert len(set(first_epoch)) > len(first_epoch) * 0.9
    state = [torch.load(record / f"buffers_rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    for name in ("schedule.loss_sum", "schedule.loss_count", "schedule.alpha_bar_table", "schedule.refits", "timestep_sampler.loss_history", "timestep_sampler.history_count"):
        assert torch.equal(state[0][name], state[1][name]), f"{name} differs between ranks"
    # Every example of both ranks is in the (shared) loss-aware history: gathered, not per rank.
    assert int(state[0]["timestep_sampler.history_count"].sum()) == sum(len(row["index"]) for row in rows)
    # The schedule refit itself once (step 4); the statistics since then hold steps 5-6 of both ranks.
    assert int(state[0]["schedule.refits"]) == 1 and int(state[0]["schedule.train_steps"]) == 6
    assert state[0]["schedule.loss_count"].sum() > 0

    (ckpt,) = (tmp_path / "run").rglob("last.ckpt")
    # Small evaluation batches: an odd number of them, so the distributed padding repeats one batch on rank 1.
    predict_args = [*tiny, "--data.eval_max_tokens", "64", "--ckpt_path", ckpt]
    ddp = cli("predict", *common, *predict_args, *DDP, "--trainer.default_root_dir", tmp_path / "ddp_predict", cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    single = cli("predict", *common, *predict_args, "--trainer.devices", "1", "--trainer.default_root_dir", tmp_path / "single_predict", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-4000:]

    def predictions(root: Path) -> list[dict[str, str]]:
        (path,) = root.rglob("predictions.jsonl")
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    inputs = tiny_data.pairs("test")
    distributed, reference = predictions(tmp_path / "ddp_predict"), predictions(tmp_path / "single_predict")
    assert [row["source"] for row in distributed] == [row["src"] for row in inputs]  # complete, ordered, no duplicates
    assert [row["hypothesis"] for row in distributed] == [row["hypothesis"] for row in reference]


def test_ddp_trains_the_discrete_family_with_identical_statistics(tmp_path: Path, tiny_data: TinyData) -> None:
    """Two CPU ranks fit the spindle schedule on the same statistics and stay in sync (the predict path is shared
    with every family and checked above)."""
    recipe = RECIPES_DIR / "discrete" / "multi30k_en_de_spindle.yaml"
    record = tmp_path / "record"
    config = {
        "trainer": {
            "callbacks": [
                {"class_path": "run_probes.BatchRecorder", "init_args": {"directory": str(record)}},
                {"class_path": "run_probes.DumpTrainingState", "init_args": {"directory": str(record)}},
            ]
        }
    }
    (tmp_path / "overlay.yaml").write_text(json.dumps(config), encoding="utf-8")
    tiny = make_tiny_overrides(tmp_path / "run", recipe, data=tiny_data, max_steps=4, val_check_interval=4)
    fit = cli("fit", "-c", recipe, "-c", tmp_path / "overlay.yaml", *tiny, *DDP, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-4000:]
    rows = [json.loads(line) for rank in (0, 1) for line in (record / f"rank{rank}.jsonl").read_text().splitlines()]
    assert {row["rank"] for row in rows} == {0, 1}
    state = [torch.load(record / f"buffers_rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert state[0]["schedule.information"].numel() > 0
    assert torch.equal(state[0]["schedule.information"], state[1]["schedule.information"])
