"""SeqDiffuSeq's adaptive per-position schedule: table, statistics, refit, its own refit cadence in training,
checkpoints and EMA copies."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_diffusion import DiffusionLM
from lightning_diffusion.callbacks import EMA, AdaptiveScheduleRefit
from lightning_diffusion.denoisers import EncoderDecoderDenoiser
from lightning_diffusion.samplers import DDIMSampler
from lightning_diffusion.schedules import AdaptiveSchedule, SqrtSchedule
from lightning_diffusion.schedules.adaptive import interp

# ---------------------------------------------------------------------------------------------- table


@pytest.mark.parametrize("T", [7, 50])
def test_initial_table_is_sqrt_schedule_in_every_column(T: int) -> None:
    sched = AdaptiveSchedule(num_steps=T, max_length=4, num_bins=5)
    sqrt = SqrtSchedule(T).alpha_bar_table
    assert sched.alpha_bar_table.shape == (T + 1, 4)
    for col in range(4):
        assert torch.equal(sched.alpha_bar_table[:, col], sqrt)
    assert sched.num_bins == 5
    assert AdaptiveSchedule(num_steps=3, max_length=2, num_bins=100).num_bins == 3  # no more bins than steps


def test_alpha_bar_shape_and_last_column_for_long_positions() -> None:
    sched = AdaptiveSchedule(num_steps=10, max_length=3, num_bins=5)
    with torch.no_grad():
        for col in range(3):
            sched.alpha_bar_table[:, col] *= 1.0 - 0.1 * col  # distinct columns
    t = torch.tensor([0, 3, 10])
    out = sched.alpha_bar(t, 5)
    assert out.shape == (3, 5)
    table = sched.alpha_bar_table
    for i, step in enumerate(t.tolist()):
        expected = table[step, [0, 1, 2, 2, 2]]
        assert torch.equal(out[i], expected)
    assert torch.equal(sched.alpha_bar(t, 2), out[:, :2])
    # q_sample uses each position's own level.
    z0, noise = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    expected = out.unsqueeze(-1).sqrt() * z0 + (1 - out.unsqueeze(-1)).sqrt() * noise
    torch.testing.assert_close(sched.q_sample(z0, t, noise), expected)


def test_observe_accumulates_into_bin_and_position_cells() -> None:
    sched = AdaptiveSchedule(num_steps=10, max_length=3, num_bins=5)  # bins of two steps: (1,2), (3,4), ...
    assert sched.bin_of(torch.arange(1, 11)).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    t = torch.tensor([1, 4, 10])
    loss = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]])
    mask = torch.tensor([[True, True, False, True], [True, False, True, True], [False, False, False, False]])
    sched.observe(t, loss, mask)
    sched.commit_observations()
    expected_sum = torch.zeros(5, 3, dtype=torch.float64)
    expected_count = torch.zeros(5, 3, dtype=torch.float64)
    # t=1 -> bin 0: positions 0, 1 and 3 (-> last column 2); position 2 is masked.
    expected_sum[0] = torch.tensor([1.0, 2.0, 4.0])
    expected_count[0] = torch.tensor([1.0, 1.0, 1.0])
    # t=4 -> bin 1: positions 0, 2 and 3 (both of the last two land in column 2).
    expected_sum[1] = torch.tensor([5.0, 0.0, 15.0])
    expected_count[1] = torch.tensor([1.0, 0.0, 2.0])
    # t=10 -> bin 4: all masked.
    assert torch.equal(sched.loss_sum, expected_sum)
    assert torch.equal(sched.loss_count, expected_count)
    sched.observe(torch.tensor([2]), torch.tensor([[0.5, 0.25]]), torch.tensor([[True, True]]))
    sched.commit_observations()
    expected_sum[0, :2] += torch.tensor([0.5, 0.25], dtype=torch.float64)
    expected_count[0, :2] += 1
    assert torch.equal(sched.loss_sum, expected_sum)
    assert torch.equal(sched.loss_count, expected_count)


# ---------------------------------------------------------------------------------------------- refit


def _binned(values: np.ndarray, bins: np.ndarray, num_bins: int) -> np.ndarray:
    return np.array([values[bins == k].mean() for k in range(num_bins)])


def _nonlinearity(x: np.ndarray, y: np.ndarray) -> float:
    """Largest distance of ``y`` from the chord through its end points, relative to its range."""
    line = y[0] + (y[-1] - y[0]) * (x - x[0]) / (x[-1] - x[0])
    return float(np.abs(y - line).max() / (y.max() - y.min()))


def test_refit_makes_recorded_loss_linear_in_t_per_position() -> None:
    T, nb = 200, 20
    sched = AdaptiveSchedule(num_steps=T, max_length=4, num_bins=nb)
    old = sched.alpha_bar_table.double().numpy().copy()
    t = torch.arange(1, T + 1)
    frac = t.double() / T
    # Position 0: concave loss, 1: convex, 2: data only in the first half (missing bins), 3: flat loss.
    loss = torch.stack([frac**0.3, frac**3.0, frac, torch.full_like(frac, 0.5)], dim=1)
    mask = torch.ones(T, 4, dtype=torch.bool)
    mask[T // 2 :, 2] = False
    sched.observe(t, loss, mask)
    sched.commit_observations()
    assert sched.refit() == 2
    new = sched.alpha_bar_table.double().numpy()

    # Statistics reset; untouched positions keep their column; t = 0 stays clean.
    assert not sched.loss_sum.any() and not sched.loss_count.any()
    assert np.array_equal(new[:, 2], old[:, 2]) and np.array_equal(new[:, 3], old[:, 3])
    assert np.all(new[0] == 1.0)
    for pos in (0, 1):
        column = new[1:, pos]
        assert np.all(np.diff(column) <= 0), "refit column must be non-increasing in t"
        assert np.all((column > 0) & (column < 1))
        assert not np.allclose(column, old[1:, pos])
        # The noise range is kept: abar_1 and abar_T do not move.
        assert column[0] == pytest.approx(old[1, pos]) and column[-1] == pytest.approx(old[-1, pos])
    assert not np.allclose(new[1:, 0], new[1:, 1]), "positions with different losses get different schedules"
    # The concave position needs more noise early (lower abar) than the convex one.
    assert new[T // 2, 0] > new[T // 2, 1]

    # Resample the synthetic loss through the fixed abar -> loss relation of each position: the loss that
    # training would record per bin under the new table is far closer to linear in t than before.
    steps = np.arange(1, T + 1, dtype=np.float64)
    bins = sched.bin_of(t).numpy()
    centers = _binned(steps, bins, nb)
    for pos, power in ((0, 0.3), (1, 3.0)):
        equivalent_t = np.interp(new[1:, pos], old[1:, pos][::-1], steps[::-1])  # old step with the same abar
        before = _nonlinearity(centers, _binned((steps / T) ** power, bins, nb))
        after = _nonlinearity(centers, _binned((equivalent_t / T) ** power, bins, nb))
        assert before > 0.25
        assert after < 0.06 and after < 0.2 * before, (pos, before, after)


def test_refit_of_an_already_linear_loss_changes_nothing() -> None:
    """With one step per bin, a loss already linear in t is a fixed point of the refit, also after many refits
    (the levels at the bin steps, and at t = 1 and T, must not drift)."""
    T = 20
    sched = AdaptiveSchedule(num_steps=T, max_length=1, num_bins=T)
    initial = sched.alpha_bar_table.clone()
    t = torch.arange(1, T + 1)
    for _ in range(5):
        sched.observe(t, (t.double() / T)[:, None], torch.ones(T, 1, dtype=torch.bool))
        sched.commit_observations()
        assert sched.refit() == 1
        torch.testing.assert_close(sched.alpha_bar_table, initial, rtol=0, atol=1e-6)


def test_repeated_refits_keep_the_noise_range() -> None:
    """A model whose loss depends on the noise level only: many refits must not shrink [abar_T, abar_1]."""
    T, nb = 400, 20
    sched = AdaptiveSchedule(num_steps=T, max_length=1, num_bins=nb)
    first, last = float(sched.alpha_bar_table[1, 0]), float(sched.alpha_bar_table[T, 0])
    t = torch.arange(1, T + 1)
    for _ in range(20):
        abar = sched.alpha_bar(t, 1).double()
        sched.observe(t, 1.0 - abar, torch.ones(T, 1, dtype=torch.bool))
        sched.commit_observations()
        assert sched.refit() == 1
    assert float(sched.alpha_bar_table[1, 0]) == pytest.approx(first)
    assert float(sched.alpha_bar_table[T, 0]) == pytest.approx(last, abs=1e-7)
    # The recorded loss 1 - abar is linear in t now (per bin: what training would record).
    loss = 1.0 - sched.alpha_bar_table[1:, 0].double().numpy()
    bins = sched.bin_of(t).numpy()
    steps = np.arange(1, T + 1, dtype=np.float64)
    assert _nonlinearity(_binned(steps, bins, nb), _binned(loss, bins, nb)) < 0.02


def test_refit_needs_min_count_in_every_bin() -> None:
    T = 10
    sched = AdaptiveSchedule(num_steps=T, max_length=2, num_bins=5, min_count=2)
    initial = sched.alpha_bar_table.clone()
    t = torch.arange(1, T + 1)  # two tokens per bin at position 0, one at position 1 (odd steps only)
    mask = torch.stack([torch.ones(T, dtype=torch.bool), t % 2 == 1], dim=1)
    sched.observe(t, torch.stack([t.double(), t.double()], 1) ** 2, mask)
    sched.commit_observations()
    assert sched.refit() == 1
    assert torch.equal(sched.alpha_bar_table[:, 1], initial[:, 1])
    assert not torch.equal(sched.alpha_bar_table[:, 0], initial[:, 0])
    assert not sched.loss_count.any()
    assert sched.refit() == 0  # nothing recorded since


def test_interp_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    for n, m in [(2, 5), (7, 30), (50, 200)]:
        xp = np.cumsum(rng.uniform(0.01, 1.0, n))
        fp = rng.normal(size=n)
        x = rng.uniform(xp[0] - 1.0, xp[-1] + 1.0, m)
        x[:3] = xp[:3] if n >= 3 else x[:3]  # exactly on knots as well
        got = interp(torch.from_numpy(x), torch.from_numpy(xp), torch.from_numpy(fp)).numpy()
        np.testing.assert_allclose(got, np.interp(x, xp, fp), rtol=0, atol=1e-12)
    # Repeated knots (flat stretches of a cummax'd loss) behave like numpy too.
    xp = np.array([0.0, 1.0, 1.0, 1.0, 2.0, 3.0])
    fp = np.array([1.0, 0.8, 0.7, 0.6, 0.3, 0.1])
    x = np.array([-1.0, 0.0, 0.5, 1.0, 1.5, 3.0, 4.0])
    got = interp(torch.from_numpy(x), torch.from_numpy(xp), torch.from_numpy(fp)).numpy()
    np.testing.assert_allclose(got, np.interp(x, xp, fp), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- training


def _denoiser() -> functools.partial[EncoderDecoderDenoiser]:
    return functools.partial(
        EncoderDecoderDenoiser, latent_dim=8, hidden_dim=16, encoder_layers=1, decoder_layers=1, num_heads=2,
        ffn_dim=32, dropout=0.0, max_positions=96,
    )  # fmt: skip


def _schedule(refit_every: int = 1000, refit_warmup: int = 1000) -> AdaptiveSchedule:
    return AdaptiveSchedule(num_steps=20, max_length=48, num_bins=2, refit_every=refit_every, refit_warmup=refit_warmup)


def _trainer(tmp_path: Path, max_steps: int, callbacks: list[Any], checkpointing: bool = False) -> Trainer:
    return Trainer(
        max_steps=max_steps, limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu", logger=False,
        enable_checkpointing=checkpointing, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, use_distributed_sampler=False, callbacks=callbacks,
    )  # fmt: skip


def test_schedule_refits_itself_in_training_and_checkpoint_round_trip(tiny_datamodule: Any, tmp_path: Path) -> None:
    torch.manual_seed(0)
    denoiser = _denoiser()
    module = DiffusionLM(
        denoiser=denoiser, schedule=_schedule(refit_every=2, refit_warmup=3), sampler=DDIMSampler(steps=3),
        vocab_size=tiny_datamodule.vocab_size, length_ratio=1.0, length_offset=2,
    )  # fmt: skip
    initial = module.schedule.alpha_bar_table.clone()
    schedule = module.schedule
    refit_calls: list[tuple[int, int, float, int]] = []
    real_refit = schedule.refit

    def spy_refit() -> int:
        recorded = float(schedule.loss_count.sum())
        n = real_refit()
        refit_calls.append((int(schedule.train_steps), trainer.global_step, recorded, n))
        return n

    schedule.refit = spy_refit  # type: ignore[method-assign]
    trainer = _trainer(tmp_path, 6, [])  # no refit callback: the schedule refits itself
    trainer.fit(module, tiny_datamodule)
    assert trainer.global_step == 6
    # Not before the warm-up, then every 2 steps: the steps the old callback refit at, each inside the training
    # step (global_step still counts the optimizer steps before it).
    assert [(step, global_step) for step, global_step, _, _ in refit_calls] == [(4, 3), (6, 5)]
    assert all(recorded > 0 for _, _, recorded, _ in refit_calls)  # training recorded statistics in between
    assert sum(n for _, _, _, n in refit_calls) > 0
    assert int(schedule.train_steps) == 6 and int(schedule.refits) == 2
    assert not schedule.loss_count.any()  # reset by the last refit
    assert not torch.equal(schedule.alpha_bar_table, initial)

    path = tmp_path / "adaptive.ckpt"
    trainer.save_checkpoint(path)
    del schedule.refit  # the plain method again
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert int(saved["schedule.train_steps"]) == 6 and int(saved["schedule.refits"]) == 2
    loaded = DiffusionLM.load_from_checkpoint(
        path, denoiser=denoiser, schedule=_schedule(), sampler=DDIMSampler(steps=3)
    )
    assert torch.equal(loaded.schedule.alpha_bar_table, module.schedule.alpha_bar_table)
    assert not torch.equal(loaded.schedule.alpha_bar_table, initial)
    assert int(loaded.schedule.train_steps) == 6 and int(loaded.schedule.refits) == 2  # a resume refits on cue

    module.eval()
    loaded.eval()
    loaded.attach_tokenizer(tiny_datamodule.tokenizer, tiny_datamodule.tokenizer_fingerprint)
    tiny_datamodule.setup("validate")
    batch = next(iter(tiny_datamodule.val_dataloader()))
    a = module.generate(batch.src_ids, batch.src_mask, torch.Generator().manual_seed(3))
    b = loaded.generate(batch.src_ids, batch.src_mask, torch.Generator().manual_seed(3))
    assert a.texts == b.texts

    # The latents match exactly, and the refit table matters: the initial table gives other latents.
    def latents(model: DiffusionLM, sched: Any) -> torch.Tensor:
        cond = model.denoiser.encode(batch.src_ids, batch.src_mask)
        length = model.canvas_length(batch.src_mask)
        out = model.sampler.sample(
            model.denoiser, sched, cond, length, None, torch.Generator().manual_seed(3)
        )
        return out.latents

    with torch.no_grad():
        reference = latents(module, module.schedule)
        assert torch.equal(latents(loaded, loaded.schedule), reference)
        assert not torch.equal(latents(loaded, _schedule()), reference)


@pytest.mark.parametrize("ema_every", [1, 4])
def test_checkpoints_and_ema_weights_hold_the_refit_table(tiny_datamodule: Any, tmp_path: Path, ema_every: int) -> None:
    """Without any refit callback, a checkpoint saved after a refit holds the refit table in the live weights and
    in the EMA weights, also when the EMA updates less often than the schedule refits."""
    torch.manual_seed(0)
    module = DiffusionLM(
        denoiser=_denoiser(), schedule=_schedule(refit_every=2, refit_warmup=3), vocab_size=tiny_datamodule.vocab_size
    )
    initial = SqrtSchedule(20).alpha_bar_table[:, None].repeat(1, 48)
    assert torch.equal(module.schedule.alpha_bar_table, initial)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1, filename="{step}")
    ema = EMA(decay=0.9, update_every_n_steps=ema_every)  # with 4: updates after steps 1 and 5, not after 6
    trainer = _trainer(tmp_path, 6, [ema, checkpoints], checkpointing=True)
    trainer.fit(module, tiny_datamodule)

    before = torch.load(tmp_path / "ckpt" / "step=3.ckpt", weights_only=True)
    for key in ("state_dict", "current_model_state"):  # the EMA weights, then the live ones
        assert torch.equal(before[key]["schedule.alpha_bar_table"], initial)  # before the warm-up ends
        assert int(before[key]["schedule.refits"]) == 0
    after = torch.load(tmp_path / "ckpt" / "step=6.ckpt", weights_only=True)
    live, averaged = after["current_model_state"], after["state_dict"]
    table = live["schedule.alpha_bar_table"]
    assert not torch.equal(table, initial)
    assert torch.equal(averaged["schedule.alpha_bar_table"], table)
    assert int(live["schedule.train_steps"]) == 6 and int(live["schedule.refits"]) == 2  # steps 4 and 6
    assert int(averaged["schedule.refits"]) == 2
    assert any(not torch.equal(averaged[k], v) for k, v in live.items() if k.startswith("denoiser."))  # averaged
    # At the end of fit the module holds the EMA weights, with the same (live) table.
    assert torch.equal(module.schedule.alpha_bar_table, table)


def test_schedule_refit_cadence_and_arguments() -> None:
    sched = AdaptiveSchedule(num_steps=10, max_length=2, num_bins=5, refit_every=2, refit_warmup=3)
    refit_after = []
    for step in range(1, 9):
        sched.observe(torch.arange(1, 11), torch.rand(10, 2), torch.ones(10, 2, dtype=torch.bool))
        refits = int(sched.refits)
        sched.commit_observations()
        if int(sched.refits) > refits:
            refit_after.append(step)
            assert not sched.loss_count.any()
    assert refit_after == [4, 6, 8]
    assert int(sched.train_steps) == 8 and int(sched.refits) == 3
    assert sched.state_dict()["train_steps"].item() == 8 and sched.state_dict()["refits"].item() == 3
    # No warm-up: every refit_every steps from the start.
    no_warmup = AdaptiveSchedule(num_steps=10, max_length=2, num_bins=5, refit_every=3, refit_warmup=0)
    for _ in range(7):
        no_warmup.commit_observations()
    assert int(no_warmup.refits) == 2  # steps 3 and 6

    # A state dict from before the counters (older checkpoints) still loads, with both counters at 0.
    old = {k: v for k, v in sched.state_dict().items() if k not in ("train_steps", "refits")}
    fresh = AdaptiveSchedule(num_steps=10, max_length=2, num_bins=5)
    fresh.load_state_dict(old)
    assert int(fresh.train_steps) == 0 and int(fresh.refits) == 0
    assert torch.equal(fresh.alpha_bar_table, sched.alpha_bar_table)

    with pytest.raises(ValueError, match="refit_every must be >= 1, got 0"):
        AdaptiveSchedule(num_steps=10, refit_every=0)
    with pytest.raises(ValueError, match="refit_warmup must be >= 0, got -1"):
        AdaptiveSchedule(num_steps=10, refit_warmup=-1)


def test_the_removed_refit_callback_says_what_to_change() -> None:
    with pytest.raises(ValueError, match="AdaptiveScheduleRefit was removed") as raised:
        AdaptiveScheduleRefit(every_n_steps=500, warmup_steps=200)
    assert "model.schedule.init_args: {refit_every: 500, refit_warmup: 200}" in str(raised.value)


def test_observations_stay_pending_until_committed_and_are_summed_over_ranks() -> None:
    """Statistics change only at commit, through the rank reduction (here: a fake 2-rank sum of equal parts)."""
    sched = AdaptiveSchedule(num_steps=10, max_length=2, num_bins=5)
    sched.observe(torch.tensor([1]), torch.tensor([[2.0, 3.0]]), torch.tensor([[True, True]]))
    assert sched.loss_count.sum() == 0  # pending only
    assert "pending" not in sched.state_dict()  # never checkpointed half-reduced
    reduced_inputs: list[torch.Tensor] = []

    def two_ranks(tensor: torch.Tensor) -> torch.Tensor:
        reduced_inputs.append(tensor.clone())
        return tensor * 2

    sched.commit_observations(two_ranks)
    assert len(reduced_inputs) == 1 and reduced_inputs[0].shape == (2, 5, 2)  # one collective per step
    assert sched.loss_sum[0].tolist() == [4.0, 6.0] and sched.loss_count[0].tolist() == [2.0, 2.0]
    assert sched.pending.abs().sum() == 0
    sched.commit_observations(two_ranks)  # nothing pending: nothing added
    assert sched.loss_sum[0].tolist() == [4.0, 6.0]
