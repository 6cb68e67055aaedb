"""Crash and resume: a real ``lightning-diffusion fit`` subprocess is SIGKILLed mid-epoch, resumed from its last
checkpoint, and must continue exactly as the uninterrupted run: same batches in the same order, same losses,
and the same final state (weights, EMA weights, optimizer, loss-aware timestep history, adaptive-schedule
statistics and table)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RECIPES_DIR, TinyData, make_tiny_overrides

from lightning_diffusion.schedules import AdaptiveSchedule

RECIPE = RECIPES_DIR / "seqdiffuseq" / "multi30k_en_de.yaml"  # adaptive schedule, self-conditioning, EMA
HELPERS = Path(__file__).resolve().parent / "helpers"
MAX_STEPS = 16  # a multiple of CHECKPOINT_EVERY: last.ckpt holds the final state
CHECKPOINT_EVERY = 4
KILL_AT = 10  # two steps after the step-8 checkpoint, in the second epoch


def overlay(path: Path, record_dir: Path, kill_at: int | None) -> Path:
    """Callbacks and parts whose state must survive the crash, small enough to change within 14 steps."""
    callbacks: list[dict[str, Any]] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"every_n_train_steps": CHECKPOINT_EVERY, "save_last": True, "save_top_k": -1},
        },
        {"class_path": "lightning_diffusion.callbacks.EMA", "init_args": {"decay": 0.9}},
        {"class_path": "run_probes.BatchRecorder", "init_args": {"directory": str(record_dir)}},
    ]
    if kill_at is not None:
        callbacks.append({"class_path": "run_probes.KillAtStep", "init_args": {"step": kill_at}})
    config = {
        "trainer": {"callbacks": callbacks},
        "model": {
            "init_args": {
                "denoiser": {"init_args": {"dropout": 0.1}},  # dropout draws from the RNG too
                "schedule": {
                    "class_path": "lightning_diffusion.schedules.AdaptiveSchedule",
                    "init_args": {"num_steps": 20, "max_length": 40, "num_bins": 5, "refit_every": 3, "refit_warmup": 3},
                },
                "timestep_sampler": {
                    "class_path": "lightning_diffusion.timesteps.LossAwareTimestepSampler",
                    "init_args": {"history": 2},  # warm after ~40 examples: sampling follows the history
                },
            }
        },
    }
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path


def fit(root: Path, data: TinyData, name: str, *extra: str, kill_at: int | None = None) -> subprocess.CompletedProcess[str]:
    record_dir = root / name / "record"
    args = [
        "-c", str(RECIPE),
        "-c", str(overlay(root / f"{name}.yaml", record_dir, kill_at)),
        *make_tiny_overrides(root / name, RECIPE, data=data, max_steps=MAX_STEPS, val_check_interval=6),
        "--data.max_tokens", "512",  # about 6 batches per epoch: the step-8 checkpoint is inside epoch 1
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "lightning_diffusion.cli", "fit", *args],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )


def records(root: Path, name: str) -> list[dict[str, Any]]:
    path = root / name / "record" / "rank0.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def checkpoint(root: Path, name: str, step: int | None = None) -> Path:
    pattern = "last.ckpt" if step is None else f"*step={step}.ckpt"
    found = sorted((root / name).rglob(pattern))
    assert found, f"no {pattern} under {root / name}"
    return found[-1]


def assert_same_state(resumed: dict[str, Any], uninterrupted: dict[str, Any]) -> None:
    for key in ("state_dict", "current_model_state"):  # EMA weights, then the live weights (+ every buffer)
        assert resumed[key].keys() == uninterrupted[key].keys()
        for name, tensor in uninterrupted[key].items():
            torch.testing.assert_close(resumed[key][name], tensor, rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")
    for a, b in zip(resumed["optimizer_states"][0]["state"].values(), uninterrupted["optimizer_states"][0]["state"].values(), strict=True):
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=1e-5, atol=1e-9)
    assert resumed["global_step"] == uninterrupted["global_step"] == MAX_STEPS


def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path: Path, tiny_data: TinyData) -> None:
    straight = fit(tmp_path, tiny_data, "straight")
    assert straight.returncode == 0, straight.stderr[-4000:]

    killed = fit(tmp_path, tiny_data, "crash", kill_at=KILL_AT)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-4000:])
    before = records(tmp_path, "crash")
    assert before[-1]["step"] == KILL_AT  # it died after step 10; the newest checkpoint is step 8
    last = torch.load(checkpoint(tmp_path, "crash"), map_location="cpu", weights_only=True)
    assert last["global_step"] == 8
    position = last["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert position["epoch"] == 1 and 0 < position["batches_done"]  # mid-epoch, not at an epoch boundary

    resumed = fit(tmp_path, tiny_data, "crash", "--ckpt_path", str(checkpoint(tmp_path, "crash")))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "not resumable" not in resumed.stderr  # Lightning's warning for loaders without state

    expected = {row["step"]: row for row in records(tmp_path, "straight")}
    assert sorted(expected) == list(range(1, MAX_STEPS + 1))
    # The resumed process re-ran steps 9 and 10 (lost with the crash), then went on to the end.
    after = records(tmp_path, "crash")[len(before) :]
    assert [row["step"] for row in after] == list(range(9, MAX_STEPS + 1))
    for row in [*before[:8], *after]:
        reference = expected[row["step"]]
        assert row["index"] == reference["index"], f"step {row['step']}: different batch (data position lost)"
        assert row["epoch"] == reference["epoch"]
        assert row["loss"] == pytest.approx(reference["loss"], rel=1e-5), f"step {row['step']}"

    final = torch.load(checkpoint(tmp_path, "crash"), map_location="cpu", weights_only=True)
    reference_final = torch.load(checkpoint(tmp_path, "straight"), map_location="cpu", weights_only=True)
    assert_same_state(final, reference_final)
    history = final["current_model_state"]["timestep_sampler.history_count"]
    assert int(history.sum()) == sum(len(row["index"]) for row in expected.values())  # nothing lost or doubled
    # The schedule kept refitting after the resume (steps 3, 6 before the crash; 9, 12, 15 after), and the EMA
    # weights ("state_dict") hold the same refit table as the live weights.
    live, ema = final["current_model_state"], final["state_dict"]
    assert int(live["schedule.train_steps"]) == MAX_STEPS and int(live["schedule.refits"]) == MAX_STEPS // 3
    assert torch.equal(ema["schedule.alpha_bar_table"], live["schedule.alpha_bar_table"])
    assert torch.equal(ema["schedule.refits"], live["schedule.refits"])
    initial = AdaptiveSchedule(num_steps=20, max_length=40, num_bins=5).alpha_bar_table
    assert not torch.equal(live["schedule.alpha_bar_table"], initial)


DISCRETE_RECIPE = RECIPES_DIR / "discrete" / "multi30k_en_de_spindle.yaml"  # spindle statistics, time input, EMA


def fit_discrete(root: Path, data: TinyData, name: str, *extra: str, kill_at: int | None = None) -> subprocess.CompletedProcess[str]:
    record_dir = root / name / "record"
    callbacks: list[dict[str, Any]] = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"every_n_train_steps": CHECKPOINT_EVERY, "save_last": True, "save_top_k": -1}},
        {"class_path": "lightning_diffusion.callbacks.EMA", "init_args": {"decay": 0.9}},
        {"class_path": "run_probes.BatchRecorder", "init_args": {"directory": str(record_dir)}},
    ]
    if kill_at is not None:
        callbacks.append({"class_path": "run_probes.KillAtStep", "init_args": {"step": kill_at}})
    config = {"trainer": {"callbacks": callbacks}, "model": {"init_args": {"denoiser": {"init_args": {"dropout": 0.1}}}}}
    (root / f"{name}.yaml").write_text(json.dumps(config), encoding="utf-8")
    args = [
        "-c", str(DISCRETE_RECIPE), "-c", str(root / f"{name}.yaml"),
        *make_tiny_overrides(root / name, DISCRETE_RECIPE, data=data, max_steps=MAX_STEPS, val_check_interval=6),
        "--data.max_tokens", "512", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "lightning_diffusion.cli", "fit", *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_discrete_family_resumes_exactly(tmp_path: Path, tiny_data: TinyData) -> None:
    """The discrete family (spindle statistics in the checkpoint, stratified times, EMA) resumes as exactly."""
    straight = fit_discrete(tmp_path, tiny_data, "straight")
    assert straight.returncode == 0, straight.stderr[-4000:]
    killed = fit_discrete(tmp_path, tiny_data, "crash", kill_at=KILL_AT)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-4000:])
    resumed = fit_discrete(tmp_path, tiny_data, "crash", "--ckpt_path", str(checkpoint(tmp_path, "crash")))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "token information fitted" not in resumed.stderr  # statistics came back with the checkpoint, not refitted
    expected = {row["step"]: row for row in records(tmp_path, "straight")}
    for row in records(tmp_path, "crash"):
        assert row["loss"] == pytest.approx(expected[row["step"]]["loss"], rel=1e-5), f"step {row['step']}"
    final = torch.load(checkpoint(tmp_path, "crash"), map_location="cpu", weights_only=True)
    assert_same_state(final, torch.load(checkpoint(tmp_path, "straight"), map_location="cpu", weights_only=True))
    assert final["state_dict"]["schedule.information"].numel() > 0
