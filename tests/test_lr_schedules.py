"""The LR schedules of lightning_diffusion.lr_schedules: hand-computed rates, shapes, argument checks, state
round trips through a weights-only load, and a recipe run through the CLI with the schedule given on the command line."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import RECIPES_DIR

from lightning_diffusion.checkpoints import read_checkpoint
from lightning_diffusion.lr_schedules import InverseSqrt, WarmupCosine, WarmupLinear


def optimizer(*lrs: float) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def rates(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int, group: int = 0) -> list[float]:
    """The rate of each of ``steps`` optimizer steps (the rate in use before step n, n = 0, 1, ...)."""
    opt = scheduler.optimizer
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[group]["lr"])
        opt.step()
        scheduler.step()
    return out


def test_inverse_sqrt_hand_values() -> None:
    # fairseq: lr = init + n * (base - init) / W before W, base * sqrt(W / n) from W on.
    got = rates(InverseSqrt(optimizer(1e-3), warmup_steps=4), 10)
    want = [0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3 * math.sqrt(4 / 5), 1e-3 * math.sqrt(4 / 6), 1e-3 * math.sqrt(4 / 7)]
    assert got[:8] == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert got[9] == pytest.approx(1e-3 * math.sqrt(4 / 9))
    got = rates(InverseSqrt(optimizer(1e-3), warmup_steps=4, warmup_init_lr=1e-7), 5)
    assert got == pytest.approx([1e-7, 1e-7 + (1e-3 - 1e-7) / 4, 1e-7 + 2 * (1e-3 - 1e-7) / 4, 1e-7 + 3 * (1e-3 - 1e-7) / 4, 1e-3])


def test_inverse_sqrt_warmup_init_lr_is_absolute_per_group() -> None:
    scheduler = InverseSqrt(optimizer(1e-3, 1e-4), warmup_steps=2, warmup_init_lr=1e-5)
    assert rates(scheduler, 3, group=1) == pytest.approx([1e-5, 1e-5 + (1e-4 - 1e-5) / 2, 1e-4])
    assert scheduler.get_last_lr() == pytest.approx([1e-3 * math.sqrt(2 / 3), 1e-4 * math.sqrt(2 / 3)])


def test_warmup_cosine_hand_values() -> None:
    got = rates(WarmupCosine(optimizer(1.0), warmup_steps=2, total_steps=6, min_lr_ratio=0.1), 9)
    cos = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)) for p in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert got == pytest.approx([0.0, 0.5, *cos, 0.1, 0.1])
    assert got[4] == pytest.approx(0.55)  # half way: the mean of base and minimum


def test_warmup_linear_hand_values() -> None:
    got = rates(WarmupLinear(optimizer(2.0), warmup_steps=4, total_steps=8), 10)
    assert got == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 1.5, 1.0, 0.5, 0.0, 0.0])
    got = rates(WarmupLinear(optimizer(1.0), warmup_steps=0, total_steps=4, min_lr_ratio=0.2), 6)
    assert got == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2])


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: InverseSqrt(opt, warmup_steps=50, warmup_init_lr=1e-7),
        lambda opt: WarmupCosine(opt, warmup_steps=50, total_steps=200, min_lr_ratio=0.05),
        lambda opt: WarmupLinear(opt, warmup_steps=50, total_steps=200),
    ],
    ids=["inverse_sqrt", "cosine", "linear"],
)
def test_rises_during_warmup_then_never_rises(make) -> None:
    got = rates(make(optimizer(1e-3)), 300)
    assert all(a < b for a, b in itertools.pairwise(got[:51]))  # strictly rising to the peak at step 50
    assert got[50] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(got[50:]))
    assert min(got[50:]) >= 0.0


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: InverseSqrt(opt, warmup_steps=3, warmup_init_lr=1e-6),
        lambda opt: WarmupCosine(opt, warmup_steps=3, total_steps=10, min_lr_ratio=0.1),
        lambda opt: WarmupLinear(opt, warmup_steps=3, total_steps=10),
    ],
    ids=["inverse_sqrt", "cosine", "linear"],
)
def test_state_dict_round_trip_weights_only(make) -> None:
    """A resumed schedule (fresh optimizer and scheduler, both states loaded from a weights-only torch.load, as
    Lightning resumes) continues exactly as the uninterrupted one, in every parameter group."""
    first = make(optimizer(1e-3, 5e-4))
    rates(first, 5)
    buffer = io.BytesIO()
    torch.save({"optimizer": first.optimizer.state_dict(), "scheduler": first.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    second = make(optimizer(1e-3, 5e-4))
    second.optimizer.load_state_dict(state["optimizer"])
    second.load_state_dict(state["scheduler"])
    assert second.state_dict() == first.state_dict()
    want = [tuple(g["lr"] for g in first.optimizer.param_groups)]
    for _ in range(8):
        first.optimizer.step()
        first.step()
        want.append(tuple(g["lr"] for g in first.optimizer.param_groups))
    got = [tuple(g["lr"] for g in second.optimizer.param_groups)]
    for _ in range(8):
        second.optimizer.step()
        second.step()
        got.append(tuple(g["lr"] for g in second.optimizer.param_groups))
    assert got == want


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda opt: InverseSqrt(opt, warmup_steps=0), "warmup_steps must be an integer >= 1, got 0"),
        (lambda opt: InverseSqrt(opt, warmup_steps=2.5), "warmup_steps must be an integer"),
        (lambda opt: InverseSqrt(opt, warmup_steps=4, warmup_init_lr=-1e-7), "warmup_init_lr must be >= 0"),
        (lambda opt: WarmupCosine(opt, warmup_steps=-1, total_steps=10), "warmup_steps must be an integer >= 0"),
        (lambda opt: WarmupCosine(opt, warmup_steps=10, total_steps=10), r"total_steps must be an integer > warmup_steps \(10\), got 10"),
        (lambda opt: WarmupLinear(opt, warmup_steps=0, total_steps=10, min_lr_ratio=1.5), r"min_lr_ratio must be in \[0, 1\], got 1.5"),
        (lambda opt: WarmupLinear(opt, warmup_steps=0, total_steps=0), "total_steps must be an integer > warmup_steps"),
    ],
)
def test_bad_arguments_are_named(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(optimizer(1e-3))


def test_inverse_sqrt_from_the_command_line(tmp_path: Path, tiny_overrides, run_cli) -> None:
    recipe = RECIPES_DIR / "quickstart.yaml"
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path / "csv")}}
    overrides = tiny_overrides(tmp_path, recipe, max_steps=6, val_check_interval=6)
    cli = run_cli(
        [
            "fit", "-c", str(recipe), *overrides,
            "--model.lr_scheduler", "lightning_diffusion.lr_schedules.InverseSqrt",
            "--model.lr_scheduler.warmup_steps", "4",
            "--trainer.logger", json.dumps(logger),
        ]
    )  # fmt: skip
    assert cli is not None and cli.trainer.global_step == 6
    (config,) = cli.trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, InverseSqrt) and config.interval == "step"
    base = cli.trainer.optimizers[0].param_groups[0]["initial_lr"]
    want = [base * n / 4 for n in range(4)] + [base, base * math.sqrt(4 / 5)]
    # LearningRateMonitor (in the recipe) logs the rate of each step before it is taken.
    with (Path(cli.trainer.logger.log_dir) / "metrics.csv").open(encoding="utf-8") as handle:
        logged = {int(row["step"]): float(row["lr-AdamW"]) for row in csv.DictReader(handle) if row.get("lr-AdamW")}
    assert [logged[n] for n in range(6)] == pytest.approx(want)
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(base * math.sqrt(4 / 6))
    # The checkpoint's scheduler state holds only numbers: it loads weights-only, and a resume continues the schedule.
    (ckpt,) = tmp_path.rglob("last.ckpt")
    (state,) = read_checkpoint(ckpt)["lr_schedulers"]
    assert state["last_epoch"] == 6 and state["warmup_steps"] == 4
