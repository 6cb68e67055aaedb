"""Checkpoint averaging (lightning_diffusion.averaging, ``lightning-diffusion average``): the mean of crafted
checkpoints, what is kept and dropped, errors naming the key and files, picking the newest of a directory, and a
fitted run's last checkpoints averaged, validated and exported through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RECIPES_DIR

from lightning_diffusion.averaging import (
    average_checkpoints,
    expand_positional_checkpoints,
    latest_checkpoints,
)
from lightning_diffusion.checkpoints import CHECKPOINT_KEY, CheckpointError, read_checkpoint
from lightning_diffusion.pretrained import load_pretrained


def crafted(path: Path, step: int, scale: float, fingerprint: str = "abc", **state: Any) -> Path:
    """A checkpoint with a float weight, a half-precision weight, two tied keys, an integer counter and training
    state, whose weights are ``scale`` times fixed values."""
    tied = torch.full((2, 3), 3.0 * scale)
    state_dict = {
        "net.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3) * scale,
        "net.half": torch.ones(4, dtype=torch.float16) * scale,
        "net.embedding.weight": tied,
        "net.output.weight": tied,  # tied: the same tensor under two keys
        "schedule.refits": torch.tensor(step, dtype=torch.long),
        **state,
    }
    checkpoint = {
        "state_dict": state_dict,
        "global_step": step,
        "epoch": 0,
        "pytorch-lightning_version": "2.6.0",
        "hyper_parameters": {"_class_path": "pkg.Model", "hidden": step},
        "optimizer_states": [{"state": {}, "param_groups": []}],
        "lr_schedulers": [{"last_epoch": step}],
        "callbacks": {"EMA": {"latest_update_step": step}},
        "current_model_state": {"net.weight": torch.zeros(2, 3)},
        "averaging_state": {"n_averaged": torch.tensor(step)},
        CHECKPOINT_KEY: {"tokenizer_fingerprint": fingerprint, "train_seed": 0},
    }
    torch.save(checkpoint, path)
    return path


def test_average_of_two_checkpoints_is_the_hand_mean(tmp_path: Path) -> None:
    older = crafted(tmp_path / "a.ckpt", step=4, scale=1.0)
    newer = crafted(tmp_path / "b.ckpt", step=8, scale=3.0)
    out = average_checkpoints([newer, older], tmp_path / "avg" / "avg.ckpt")  # order given does not matter
    assert out == tmp_path / "avg" / "avg.ckpt"
    result = read_checkpoint(out)  # loads weights-only
    state = result["state_dict"]
    assert torch.equal(state["net.weight"], torch.arange(6, dtype=torch.float32).reshape(2, 3) * 2.0)
    assert state["net.half"].dtype == torch.float16 and torch.equal(state["net.half"], torch.full((4,), 2.0, dtype=torch.float16))
    assert torch.equal(state["net.embedding.weight"], torch.full((2, 3), 6.0))
    # Tied keys stay one tensor, and integer buffers come from the newest checkpoint.
    assert state["net.output.weight"].untyped_storage().data_ptr() == state["net.embedding.weight"].untyped_storage().data_ptr()
    assert state["schedule.refits"].item() == 8
    assert result["global_step"] == 8 and result["hyper_parameters"] == {"_class_path": "pkg.Model", "hidden": 8}
    for dropped in ("optimizer_states", "lr_schedulers", "callbacks", "current_model_state", "averaging_state"):
        assert dropped not in result
    library = result[CHECKPOINT_KEY]
    assert library["tokenizer_fingerprint"] == "abc"
    assert library["averaged_from"] == [{"path": str(newer), "global_step": 8}, {"path": str(older), "global_step": 4}]
    assert not [p for p in (tmp_path / "avg").iterdir() if p.name != "avg.ckpt"]  # no temporary file left


def test_mismatched_keys_and_shapes_are_errors_naming_key_and_files(tmp_path: Path) -> None:
    base = crafted(tmp_path / "base.ckpt", 1, 1.0)
    extra = crafted(tmp_path / "extra.ckpt", 2, 1.0, **{"net.bias": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"'net\.bias' is in .*extra\.ckpt but not in .*base\.ckpt"):
        average_checkpoints([base, extra], tmp_path / "out.ckpt")
    with pytest.raises(CheckpointError, match=r"'net\.bias' is in .*extra\.ckpt but not in .*base\.ckpt"):
        average_checkpoints([extra, base], tmp_path / "out.ckpt")
    wide = crafted(tmp_path / "wide.ckpt", 2, 1.0, **{"net.weight": torch.zeros(2, 4)})
    with pytest.raises(CheckpointError, match=r"'net\.weight' has shape \(2, 3\) in .*base\.ckpt but \(2, 4\) in .*wide\.ckpt"):
        average_checkpoints([base, wide], tmp_path / "out.ckpt")
    other = crafted(tmp_path / "other.ckpt", 2, 1.0, fingerprint="xyz")
    with pytest.raises(CheckpointError, match="different tokenizers"):
        average_checkpoints([base, other], tmp_path / "out.ckpt")
    with pytest.raises(CheckpointError, match="given twice"):
        average_checkpoints([base, tmp_path / "." / "base.ckpt"], tmp_path / "out.ckpt")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        average_checkpoints([base, tmp_path / "missing.ckpt"], tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()


def test_latest_checkpoints_by_step(tmp_path: Path) -> None:
    crafted(tmp_path / "latest-step=2.ckpt", 2, 1.0)
    crafted(tmp_path / "latest-step=10.ckpt", 10, 1.0)  # newer although it sorts first by name
    crafted(tmp_path / "latest-step=6.ckpt", 6, 1.0)
    crafted(tmp_path / "step6-bleu1.00.ckpt", 6, 1.0)  # the same step as another file: counted once
    os.symlink(tmp_path / "latest-step=10.ckpt", tmp_path / "last.ckpt")
    assert [p.name for p in latest_checkpoints(tmp_path, 2)] == ["latest-step=6.ckpt", "latest-step=10.ckpt"]
    average_checkpoints(latest_checkpoints(tmp_path, 3), tmp_path / "averaged.ckpt")
    assert len(latest_checkpoints(tmp_path, 3)) == 3  # an averaged output in the folder is not picked up
    with pytest.raises(CheckpointError, match=r"asked for the last 4 checkpoints but it holds 3 of distinct steps"):
        latest_checkpoints(tmp_path, 4)


def test_positional_checkpoints_become_a_list() -> None:
    argv = ["a.ckpt", "--output", "out.ckpt", "b.ckpt", "--last=2", "--", "-odd.ckpt"]
    assert expand_positional_checkpoints(argv) == [
        "--checkpoints+=a.ckpt", "--output", "out.ckpt", "--checkpoints+=b.ckpt", "--last=2", "--checkpoints+=-odd.ckpt"
    ]  # fmt: skip


def test_cli_usage_errors(run_cli, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--output OUT.ckpt is required"):
        run_cli(["average", "a.ckpt", "b.ckpt"])
    with pytest.raises(SystemExit, match="--last K and --dir DIR go together"):
        run_cli(["average", "--last", "2", "--output", str(tmp_path / "o.ckpt")])
    with pytest.raises(SystemExit, match="error: .*missing.ckpt: no such checkpoint file"):
        run_cli(["average", str(tmp_path / "missing.ckpt"), "--output", str(tmp_path / "o.ckpt")])


def test_fit_average_last_two_validate_and_export(
    tmp_path: Path, tiny_overrides, run_cli, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tiny autoregressive run (EMA, tied embeddings) saving a checkpoint every step: the last two averaged
    with ``average --last 2 --dir``, validated with ``validate --ckpt_path`` and exported; ties stay tied."""
    recipe = RECIPES_DIR / "autoregressive" / "multi30k_en_de.yaml"
    every = tmp_path / "every"
    keep_all = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(every), "filename": "every-{step}", "save_top_k": -1, "every_n_train_steps": 1},
    }
    overrides = tiny_overrides(tmp_path, recipe, max_steps=4, val_check_interval=4, extra={"model.max_length": 8})
    cli = run_cli(["fit", "-c", str(recipe), *overrides, f"--trainer.callbacks+={json.dumps(keep_all)}"])
    assert cli is not None and cli.trainer.global_step == 4
    assert sorted(p.name for p in every.glob("*.ckpt")) == [f"every-step={n}.ckpt" for n in (1, 2, 3, 4)]

    out = tmp_path / "averaged.ckpt"
    capsys.readouterr()
    assert run_cli(["average", "--last", "2", "--dir", str(every), "--output", str(out)]) is None
    printed = capsys.readouterr().out
    assert "averaged 2 checkpoints" in printed and "every-step=3.ckpt" in printed and "every-step=4.ckpt" in printed

    states = [read_checkpoint(every / f"every-step={n}.ckpt")["state_dict"] for n in (3, 4)]
    averaged = read_checkpoint(out)
    assert averaged["global_step"] == 4 and "optimizer_states" not in averaged
    state = averaged["state_dict"]
    for key, value in state.items():
        if value.is_floating_point():
            assert torch.allclose(value, (states[0][key] + states[1][key]) / 2), key
    assert any(not torch.equal(states[0][k], states[1][k]) for k in state if state[k].is_floating_point())  # a real mean
    embedding, output = state["network.token_embedding.weight"], state["network.output_proj.weight"]
    assert embedding.untyped_storage().data_ptr() == output.untyped_storage().data_ptr()

    cli = run_cli(["validate", "-c", str(recipe), *overrides, "--ckpt_path", str(out)])
    assert cli is not None and cli.model.last_report.stage == "val" and cli.model.last_report.step == 4
    network = cli.model.network
    assert network.output_proj.weight is network.token_embedding.weight
    assert torch.equal(network.token_embedding.weight.detach(), embedding)

    tokenizer = next(tmp_path.rglob("tokenizer/tokenizer.json")).parent
    assert run_cli(["export", str(out), str(tmp_path / "exported"), "--tokenizer", str(tokenizer)]) is None
    loaded = load_pretrained(tmp_path / "exported")
    assert loaded.network.output_proj.weight is loaded.network.token_embedding.weight
    assert torch.equal(loaded.network.token_embedding.weight.detach(), embedding)
