"""End to end through the real ``lightning-diffusion`` console script (subprocesses): fit -> checkpoint ->
predict / test, plus the error paths (bad data file, unknown recipe key)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RECIPES_DIR, TinyData, make_tiny_overrides

from lightning_diffusion.commands import COMMANDS
from lightning_diffusion.metrics import corpus_bleu
from lightning_diffusion.step_progress_bar import StepProgressBar

RECIPE = RECIPES_DIR / "quickstart.yaml"


def _command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m lightning_diffusion.cli``."""
    script = Path(sys.executable).parent / "lightning-diffusion"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "lightning_diffusion.cli"]


def run(*args: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [*_command(), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, (
            f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


@dataclass
class Run:
    root: Path
    log_dir: Path
    ckpt: Path
    config: Path
    data: TinyData


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Run:
    """One tiny 10-step fit of the quickstart recipe, shared by the predict/test tests."""
    root = tmp_path_factory.mktemp("cli_fit")
    overrides = make_tiny_overrides(root / "run", RECIPE, data=tiny_data, max_steps=10, val_check_interval=5)
    proc = run("fit", "-c", RECIPE, *overrides, cwd=root)
    assert "`Trainer.fit` stopped: `max_steps=10` reached" in proc.stdout + proc.stderr
    ckpts = list((root / "run").rglob("last.ckpt"))
    assert len(ckpts) == 1, ckpts
    log_dir = ckpts[0].parent.parent
    return Run(root=root, log_dir=log_dir, ckpt=ckpts[0], config=log_dir / "config.yaml", data=tiny_data)


def predictions_file(root: Path) -> Path:
    found = list(root.rglob("predictions.jsonl"))
    assert len(found) == 1, found
    return found[0]


def test_fit_writes_checkpoint_config_and_tokenizer(trained: Run) -> None:
    assert trained.ckpt.stat().st_size > 0
    assert trained.config.is_file()
    assert (trained.log_dir / "tokenizer" / "tokenizer.json").is_file()


def test_predict_jsonl_in_input_order(trained: Run, tmp_path: Path) -> None:
    out_root = tmp_path / "predict"
    proc = run(
        "predict", "-c", trained.config, "--ckpt_path", trained.ckpt,
        "--data.predict_file", trained.data.test, "--trainer.default_root_dir", out_root,
        cwd=tmp_path,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert "NFE" in output

    inputs = trained.data.pairs("test")
    rows = [json.loads(line) for line in predictions_file(out_root).read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(inputs)
    for row, example in zip(rows, inputs, strict=True):
        assert row["source"] == example["src"]
        assert row["reference"] == example["tgt"]
        assert isinstance(row["hypothesis"], str)
        assert "index" not in row
    bleu = corpus_bleu([row["hypothesis"] for row in rows], [row["reference"] for row in rows])
    assert isinstance(bleu.score, float) and 0.0 <= bleu.score <= 100.0
    assert f"wrote {len(inputs)} predictions" in output


def test_predict_plain_text_one_line_per_input(trained: Run, tmp_path: Path) -> None:
    sources = ["I have to go to the hospital.", "", "Tom is here.", "Where is the station?"]
    txt = tmp_path / "inputs.txt"
    txt.write_text("\n".join(sources) + "\n", encoding="utf-8")
    out_root = tmp_path / "predict"
    run(
        "predict", "-c", trained.config, "--ckpt_path", trained.ckpt,
        "--data.predict_file", txt, "--trainer.default_root_dir", out_root,
        cwd=tmp_path,
    )  # fmt: skip
    rows = [json.loads(line) for line in predictions_file(out_root).read_text(encoding="utf-8").splitlines()]
    assert [row["source"] for row in rows] == sources
    assert all(isinstance(row["hypothesis"], str) and "reference" not in row for row in rows)


def test_test_subcommand_prints_bleu_and_signature(trained: Run, tmp_path: Path) -> None:
    proc = run(
        "test", "-c", trained.config, "--ckpt_path", trained.ckpt,
        "--trainer.default_root_dir", tmp_path / "test",
        cwd=tmp_path,
    )  # fmt: skip
    lines = (proc.stdout + proc.stderr).splitlines()
    assert any(line.startswith("[test @") and "BLEU" in line for line in lines), lines
    assert any("sacreBLEU signature" in line for line in lines)


def test_bad_data_file_names_file_line_and_problem(tiny_data: TinyData, tmp_path: Path) -> None:
    lines = tiny_data.train.read_text(encoding="utf-8").splitlines()
    lines[2] = '{"src": "Hello", "tgt": '
    bad = tmp_path / "bad_train.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    overrides = make_tiny_overrides(
        tmp_path / "run", RECIPE, data=tiny_data,
        extra={"data.train_file": bad, "data.tokenizer_cache_dir": tmp_path / "cache"},
    )  # fmt: skip
    proc = run("fit", "-c", RECIPE, *overrides, cwd=tmp_path, check=False)
    assert proc.returncode != 0
    message = proc.stderr
    assert f"{bad}:3:" in message
    assert "not valid JSON" in message
    assert not list(tmp_path.rglob("*.ckpt"))


def test_unknown_recipe_key_fails_clearly(tmp_path: Path) -> None:
    proc = run("fit", "-c", RECIPE, "--model.denoiser.num_layerz", "2", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "num_layerz" in proc.stderr
    assert "not accepted" in proc.stderr or "unrecognized" in proc.stderr.lower()


def test_the_command_drops_noise_a_user_cannot_act_on(
    tmp_path: Path, tiny_overrides: Any, run_cli: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import warnings

    caplog.set_level(logging.INFO)
    recipe = RECIPES_DIR / "quickstart.yaml"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_cli(["fit", "-c", str(recipe), *tiny_overrides(tmp_path, recipe)])
        (ckpt,) = tmp_path.rglob("last.ckpt")
        run_cli(["validate", "-c", str(recipe), *tiny_overrides(tmp_path, recipe), "--ckpt_path", str(ckpt)])
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "LeafSpec" in m or "custom batch sampler" in m or "outside the 'fit' stage" in m]
    assert "Tip:" not in caplog.text and "TPU available" not in caplog.text
    assert "FLOPs" not in caplog.text and "Modules in" not in caplog.text  # the model summary without them
    assert "[val @ step 2] BLEU" in caplog.text  # the messages that matter still arrive
    assert "GPU available:" in caplog.text and " parameters (" in caplog.text


def test_known_failures_are_one_line_errors_with_a_debug_switch(
    tmp_path: Path, tiny_overrides: Any, run_cli: Any, tiny_data: TinyData, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = RECIPES_DIR / "quickstart.yaml"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"src": "a", "tgt": "b"}\n{"src": "a", "tgt": \n', encoding="utf-8")
    args = ["fit", "-c", str(recipe), *tiny_overrides(tmp_path, recipe), "--data.train_file", str(bad)]
    with pytest.raises(SystemExit, match=r"^error: .*bad\.jsonl:2: not valid JSON"):
        run_cli(args)
    monkeypatch.setenv("LIGHTNING_DIFFUSION_DEBUG", "1")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):  # the exception itself (its traceback), on request
        run_cli(args)
    monkeypatch.delenv("LIGHTNING_DIFFUSION_DEBUG")

    truncated = tmp_path / "truncated.ckpt"
    run_cli(["fit", "-c", str(recipe), *tiny_overrides(tmp_path / "run", recipe)])
    (ckpt,) = (tmp_path / "run").rglob("last.ckpt")
    truncated.write_bytes(ckpt.read_bytes()[:2000])
    with pytest.raises(SystemExit, match=r"^error: .*truncated\.ckpt: not a readable checkpoint"):
        run_cli(["predict", "-c", str(recipe), *tiny_overrides(tmp_path, recipe), "--ckpt_path", str(truncated)])


def test_commands_from_a_run_checkpoint_log_into_that_run(tmp_path: Path, tiny_overrides: Any, run_cli: Any) -> None:
    """validate / predict / a resumed fit started from a run's config and checkpoint (the README's commands) write
    into that run (no new version_N), and the run's config.yaml stays the one fit wrote."""
    recipe = RECIPES_DIR / "quickstart.yaml"
    run_cli(["fit", "-c", str(recipe), *tiny_overrides(tmp_path, recipe, max_steps=2)])
    (run,) = (tmp_path / "lightning_logs").iterdir()
    config = (run / "config.yaml").read_text(encoding="utf-8")
    ckpt = run / "checkpoints" / "last.ckpt"
    run_cli(["validate", "-c", str(run / "config.yaml"), "--ckpt_path", str(ckpt)])
    run_cli(["predict", "-c", str(run / "config.yaml"), "--ckpt_path", str(ckpt)])
    assert (run / "config.yaml").read_text(encoding="utf-8") == config  # the run's config stays as fit wrote it
    run_cli(["fit", "-c", str(run / "config.yaml"), "--ckpt_path", str(ckpt), "--trainer.max_steps", "4"])
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == [run.name]
    assert (run / "predictions.jsonl").is_file() and (run / "validate_config.yaml").is_file()
    assert (run / "predict_config.yaml").is_file()
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 4  # the resumed run's last.ckpt is where the README's resume command points

    other = tmp_path / "elsewhere"  # an output directory named on the command line wins
    run_cli(["validate", "-c", str(run / "config.yaml"), "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(other)])
    assert (other / "lightning_logs").is_dir()


def test_a_tokenizer_directory_that_does_not_exist_is_an_error(tmp_path: Path, tiny_overrides: Any, run_cli: Any) -> None:
    recipe = RECIPES_DIR / "quickstart.yaml"
    missing = tmp_path / "mistyped_tokenizer"
    args = ["fit", "-c", str(recipe), *tiny_overrides(tmp_path, recipe), "--data.tokenizer", str(missing)]
    with pytest.raises(SystemExit, match=r"^error: tokenizer directory .*mistyped_tokenizer.* does not exist"):
        run_cli(args)
    assert not missing.exists()
    run_cli([*args, "--data.tokenizer_train_if_missing", "true"])  # asked for explicitly: trained and saved there
    assert (missing / "tokenizer.json").is_file()


# ---------------------------------------------------------------------------------------------- a newcomer's first hour
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(*args: str | Path, cwd: Path, columns: int = 120, timeout: float = 300.0) -> str:
    """The command with stdout and stderr on a pseudo-terminal, as in an interactive shell: all it showed, with the
    cursor-movement codes removed (bars redraw with carriage returns)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [*_command(), *map(str, args)], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, b"".join(chunks).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return ANSI.sub("", b"".join(chunks).decode("utf-8", errors="replace"))


def screens(text: str) -> list[str]:
    """One entry per line or redraw (the text between carriage returns and newlines)."""
    return [part.strip() for part in re.split(r"[\r\n]", text) if part.strip()]


def test_help_lists_every_command_without_importing_torch(tmp_path: Path) -> None:
    """``--help`` (the console script, ``python -m lightning_diffusion``) and a mistyped command answer from the light
    dispatcher."""
    for command in (_command(), [sys.executable, "-m", "lightning_diffusion"]):
        out = subprocess.run([*command, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True).stdout
        for name in ("fit", "validate", "test", "predict", "export", "generate", "distill", "average"):
            (line,) = [line for line in out.splitlines() if line.startswith(f"  {name} ")]
            assert len(line.split(maxsplit=1)[1]) > 20, line  # a description of its own
    descriptions = list(COMMANDS.values())
    assert len(set(descriptions)) == len(descriptions) == 8 and all("\n" not in text for text in descriptions)

    probe = (
        "import sys; from lightning_diffusion.commands import main; main(['--help'])\n"
        "try: main(['fitt'])\nexcept SystemExit as stop: print(stop.code)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'jsonargparse', 'transformers'}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.splitlines()[-1] == "[]", out  # neither the help nor a mistyped command imports the heavy libraries
    assert out.splitlines()[-2].startswith("error: unknown command 'fitt' (did you mean `fit`?); the commands are fit,")

    mistyped = run("predcit", "-c", RECIPE, cwd=tmp_path, check=False)
    assert mistyped.returncode == 1 and "did you mean `predict`?" in mistyped.stderr
    assert len(mistyped.stderr.strip().splitlines()) == 1 and all(name in mistyped.stderr for name in COMMANDS)
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((RECIPES_DIR.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"]["lightning-diffusion"] == "lightning_diffusion.commands:main"


def test_training_in_a_terminal_shows_steps_and_reports_on_their_own_lines(tiny_data: TinyData, tmp_path: Path) -> None:
    overrides = make_tiny_overrides(tmp_path / "run", RECIPE, data=tiny_data, max_steps=4, val_check_interval=2)
    shown = screens(run_in_terminal("fit", "-c", RECIPE, *overrides, "--trainer.enable_progress_bar", "true", cwd=tmp_path))
    steps = [s for s in shown if re.match(r"step \d+/", s)]
    assert steps and steps[-1].startswith("step 4/4 100%") and "ETA" in steps[-1] and "steps/s" in steps[-1], shown
    assert not [s for s in shown if "v_num" in s or "Epoch" in s], shown
    for message in ("[val @ step 2] BLEU", "[val @ step 4] BLEU", "validation BLEU over the run:", "`Trainer.fit` stopped"):
        found = [s for s in shown if message in s]
        assert found and all(s.startswith(message) for s in found), (message, found)  # never after a bar's text
    assert not [s for s in shown if "FLOPs" in s or "Modules in" in s]  # the summary keeps what a user can read
    assert any(re.fullmatch(r"[\d.]+( [KM])? parameters \([\d.]+( [KM])? trainable\), [\d.]+ MB", s) for s in shown), shown


def test_without_a_terminal_training_logs_progress_lines_and_draws_nothing(
    tmp_path: Path, tiny_overrides: Any, run_cli: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    caplog.set_level(logging.INFO)
    args = ["fit", "-c", str(RECIPE), *tiny_overrides(tmp_path, RECIPE, max_steps=2), "--trainer.enable_progress_bar", "true"]
    cli = run_cli(args)
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, StepProgressBar) and not bar.interactive  # installed by the command; stderr is captured
    assert "\r" not in capsys.readouterr().err  # no bars (and no sampling bars)

    caplog.clear()
    named = ["--trainer.callbacks+=lightning_diffusion.step_progress_bar.StepProgressBar", "--trainer.callbacks.line_every_s=0"]
    run_cli([*args[:-2], *named, "--trainer.enable_progress_bar", "true", "--trainer.default_root_dir", str(tmp_path / "lines")])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert lines[0].startswith("step 1/2 (50%) |") and lines[-1].startswith("step 2/2 (100%) |"), lines
    assert all("train/loss" in line and "v_num" not in line for line in lines)
    assert "\r" not in capsys.readouterr().err


def test_predict_from_an_export_writes_beside_the_export_and_says_where(trained: Run, tmp_path: Path) -> None:
    exported = tmp_path / "exported"
    out = run("export", trained.ckpt, exported, cwd=tmp_path).stdout
    assert f"{exported}/lightning_logs/version_N/predictions.jsonl" in out  # the export tells where predict writes
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = run(
        "predict", "-c", exported / "config.yaml", "--ckpt_path", exported, "--data.predict_file", trained.data.test,
        cwd=elsewhere,
    )  # fmt: skip
    written = exported / "lightning_logs" / "version_0" / "predictions.jsonl"
    assert len(written.read_text(encoding="utf-8").splitlines()) == len(trained.data.pairs("test"))
    assert not list(elsewhere.iterdir())  # nothing where the user happens to stand
    last = [line for line in proc.stderr.splitlines() if line.strip()][-2:]
    assert last[0] == f"wrote {len(trained.data.pairs('test'))} predictions to {written}", last

    chosen = tmp_path / "chosen"  # an output directory named on the command line wins
    run(
        "predict", "-c", exported / "config.yaml", "--ckpt_path", exported, "--data.predict_file", trained.data.test,
        "--trainer.default_root_dir", chosen, cwd=elsewhere,
    )  # fmt: skip
    assert (chosen / "lightning_logs" / "version_0" / "predictions.jsonl").is_file()
    assert not (exported / "lightning_logs" / "version_1").exists()
