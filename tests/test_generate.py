"""``lightning-diffusion generate``: a tiny quickstart model is trained once and exported, then decoded from
arguments, stdin (streamed, empty lines kept), the checkpoint and the export, with sampler flags; seeding and
batching guarantees; clear errors for bad paths and flags that do not apply."""

from __future__ import annotations

import functools
import json
import os
import re
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import RECIPES_DIR, TinyData, fit_tiny
from jsonargparse import CLI

from lightning_diffusion.cli import main
from lightning_diffusion.generate import (
    GenerateError,
    decoding_from_flags,
    expand_positional_texts,
    generate,
)
from lightning_diffusion.pretrained import export_pretrained, load_pretrained
from lightning_diffusion.samplers import AncestralSampler, DDIMSampler

RECIPE = RECIPES_DIR / "quickstart.yaml"
SOURCES = ["I felt cheated.", "Tom is here.", "Where is the station?", "I have to go."]
NFE_LINE = re.compile(r"NFE: (\d+) network evaluations per candidate x (\d+) candidates = (\d+) per sentence")


@dataclass
class Model:
    ckpt: Path
    export: Path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Model:
    """The quickstart recipe made tiny (3 sampling steps, length beam 3), 6 steps of fit, exported."""
    root = tmp_path_factory.mktemp("generate")
    fit_tiny(root / "run", RECIPE, tiny_data, max_steps=6, val_check_interval=3)
    ckpt = next((root / "run").rglob("last.ckpt"))
    return Model(ckpt=ckpt, export=export_pretrained(ckpt, root / "export"))


def generate_in_process(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[list[str], str]:
    """``lightning-diffusion generate <args>`` in this process -> (stdout lines, stderr)."""
    capsys.readouterr()
    main(["generate", *map(str, args)])
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err


def texts(*sources: str) -> list[str]:
    return [f"--text+={source}" for source in sources]


def nfe(stderr: str) -> tuple[int, int, int]:
    found = NFE_LINE.findall(stderr)
    assert len(found) == 1, stderr  # printed once
    return tuple(int(x) for x in found[0])  # type: ignore[return-value]


def console_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m lightning_diffusion.cli``."""
    script = Path(sys.executable).parent / "lightning-diffusion"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lightning_diffusion.cli"]


def console_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_stdin_streamed_through_the_console_script(model: Model, tmp_path: Path) -> None:
    """A full batch is decoded and flushed while stdin is still open; empty lines keep their place."""
    lines = ["I felt cheated.", "", "Tom is here.", "Where is the station?", "I have to go."]
    jsonl = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [*console_command(), "generate", str(model.export), "--batch_size", "2", "--progress", "always", "--output", str(jsonl)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=console_env(),
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("\n".join(lines[:2]) + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "the first batch was not written while stdin was open"
        first = [proc.stdout.readline(), proc.stdout.readline()]
        proc.stdin.write("\n".join(lines[2:]) + "\n")
        rest, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    out = [line.rstrip("\n") for line in first] + rest.splitlines()
    assert len(out) == len(lines) and out[1] == ""  # the empty line keeps its place
    rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    assert [row["source"] for row in rows] == lines
    assert [" ".join(row["hypothesis"].splitlines()) for row in rows] == out
    assert rows[1]["nfe"] == 0 and all(
        row["nfe"] == 3 and row["candidates"] == 3 for i, row in enumerate(rows) if i != 1
    )
    assert nfe(stderr) == (3, 3, 9)  # 3 steps x (length beam 3 x noise beam 1)
    assert "decoding: DDIMSampler(steps=3" in stderr
    assert "sampling batch 1" in stderr and "sampling batch 3" in stderr  # the progress bars
    assert "generated 5 sentences (1 empty)" in stderr and "sentences/s" in stderr


def test_bad_model_path_fails_clearly(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*console_command(), "generate", str(tmp_path / "missing"), "--text+=Hello"],
        env=console_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "error:" in proc.stderr and "missing" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_from_arguments_in_order_with_nfe(model: Model, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = generate_in_process(capsys, model.export, *texts(*SOURCES[:3]))
    assert len(out) == 3
    assert nfe(err) == (3, 3, 9)
    again, _ = generate_in_process(capsys, model.export, *texts(*SOURCES[:3]))
    assert again == out  # same seed, same output
    ckpt_out, ckpt_err = generate_in_process(capsys, model.ckpt, *texts(*SOURCES[:3]))
    assert ckpt_out == out  # the checkpoint and its export hold the same weights
    assert "DiffusionLM" in ckpt_err


def test_sampler_flags(model: Model, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = generate_in_process(
        capsys, model.export, "--steps", "2", "--noise_beam", "2", "--length_beam", "2", *texts(*SOURCES[:2])
    )
    assert len(out) == 2
    assert nfe(err) == (2, 4, 8)  # MBR pool = length beam 2 x noise beam 2
    assert "length beam 2 x noise beam 2" in err
    out, err = generate_in_process(
        capsys, model.export, "--sampler", "AncestralSampler", *texts(*SOURCES[:2])
    )
    assert len(out) == 2 and "AncestralSampler(steps=3" in err  # the model's steps, the new rule
    _, err = generate_in_process(
        capsys,
        model.export,
        "--sampler",
        "DDIMSampler",
        "--sampler.eta",
        "0.5",
        "--steps",
        "2",
        *texts(SOURCES[0]),
    )
    assert "DDIMSampler(steps=2, noise_factor=1.0, eta=0.5)" in err and nfe(err)[0] == 2


def test_stdin_in_process_keeps_alignment(
    model: Model, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("Tom is here.\n\n   \nI felt cheated.\n"))
    out, err = generate_in_process(capsys, model.export, "--text+=-", "--batch_size", "3")
    assert len(out) == 4 and out[1] == out[2] == ""
    assert "generated 4 sentences (2 empty)" in err


def test_seeding_a_batch_depends_only_on_its_lines(model: Model, capsys: pytest.CaptureFixture[str]) -> None:
    """Batch k is seeded with seed + its first line's index: its output does not depend on other batches."""
    base, _ = generate_in_process(capsys, model.export, "--batch_size", "2", "--seed", "7", *texts(*SOURCES))
    other, _ = generate_in_process(
        capsys,
        model.export,
        "--batch_size",
        "2",
        "--seed",
        "7",
        *texts("Hello.", "Good night, Tom.", *SOURCES[2:]),
    )
    assert other[2:] == base[2:]
    single, _ = generate_in_process(
        capsys, model.export, "--batch_size", "1", "--seed", "7", *texts(*SOURCES)
    )
    assert len(single) == len(base) == 4  # regrouped lines: same count and order, noise may differ


def test_positional_texts_rewrite() -> None:
    assert expand_positional_texts(["m/", "a b", "--steps", "2", "c", "-", "--progress=never", "--", "-x"]) == [
        "m/", "--text+=a b", "--steps", "2", "--text+=c", "--text+=-", "--progress=never", "--text+=-x",
    ]  # fmt: skip
    assert expand_positional_texts(["--steps", "2", "m/"]) == ["--steps", "2", "m/"]


def test_positional_texts_through_the_parser(model: Model, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    from lightning_diffusion.cli import main

    main(["generate", str(model.export), SOURCES[0], "--steps", "2", SOURCES[1]])  # what the console script runs
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    CLI(generate, args=expand_positional_texts([str(model.export), SOURCES[0], "--steps", "2", SOURCES[1]]))
    assert capsys.readouterr().out.splitlines() == out


def test_flags_build_a_decoding_without_touching_the_model(model: Model) -> None:
    module: Any = load_pretrained(model.export)
    original = module.decoding
    clamped = original.replace(sampler=DDIMSampler(steps=3, eta=0.5, clamp=True, noise_factor=0.8))
    module.decoding = clamped
    decoding, notes = decoding_from_flags(module, steps=2, noise_beam=2)
    assert module.decoding is clamped and clamped.sampler.steps == 3  # the model keeps its own settings
    assert decoding.sampler.steps == 2 and decoding.noise_beam == 2 and decoding.nfe == 2 and not notes
    assert isinstance(decoding.sampler, DDIMSampler) and decoding.sampler.clamp and decoding.sampler.eta == 0.5
    switched, notes = decoding_from_flags(module, sampler=AncestralSampler)
    assert isinstance(switched.sampler, AncestralSampler) and switched.sampler.steps == 3  # the steps in use
    # --sampler keeps the options it does not change and says which it drops.
    assert switched.sampler.clamp and switched.sampler.noise_factor == 0.8
    assert notes == [
        "--sampler AncestralSampler keeps clamp=True, noise_factor=0.8 from the model's DDIMSampler",
        "--sampler AncestralSampler drops eta=0.5 of the model's DDIMSampler (AncestralSampler has no such option)",
    ]
    with pytest.raises(GenerateError, match="--steps must be >= 1"):
        decoding_from_flags(module, steps=0)


def make_autoregressive() -> Any:
    from lightning_diffusion.autoregressive import AutoregressiveLM, TransformerSeq2Seq

    network = functools.partial(
        TransformerSeq2Seq, hidden_dim=16, encoder_layers=1, decoder_layers=1, num_heads=2, ffn_dim=32
    )
    return AutoregressiveLM(network=network, vocab_size=300)


def make_canvas_model() -> Any:
    from lightning_diffusion import DiffusionLM
    from lightning_diffusion.denoisers import DiffuSeqDenoiser
    from lightning_diffusion.schedules import SqrtSchedule

    denoiser = functools.partial(
        DiffuSeqDenoiser, hidden_dim=16, num_layers=1, num_heads=2, latent_dim=8, ffn_dim=32
    )
    return DiffusionLM(denoiser=denoiser, schedule=SqrtSchedule(20), vocab_size=300)


def test_flags_that_do_not_apply_fail_clearly(model: Model, capsys: pytest.CaptureFixture[str]) -> None:
    autoregressive = make_autoregressive()
    with pytest.raises(GenerateError, match="--sampler, --noise_beam apply to diffusion models"):
        decoding_from_flags(autoregressive, sampler=AncestralSampler, noise_beam=2)
    assert decoding_from_flags(autoregressive) == (autoregressive.decoding, [])  # no flags: nothing to complain about
    with pytest.raises(GenerateError, match="--length_beam 2 needs a model with a length predictor"):
        decoding_from_flags(make_canvas_model(), length_beam=2)
    with pytest.raises(GenerateError, match="--repeat_penalty apply to diffusion models"):
        decoding_from_flags(autoregressive, repeat_penalty=3.0)
    assert decoding_from_flags(make_canvas_model(), repeat_penalty=3.0)[0].repeat_penalty == 3.0
    with pytest.raises(GenerateError, match="--repeat_penalty must be a number >= 0"):
        decoding_from_flags(make_canvas_model(), repeat_penalty=-1.0)
    with pytest.raises(SystemExit, match="--batch_size must be >= 1"):
        main(["generate", str(model.export), "--batch_size", "0", "--text+=Hi"])
    with pytest.raises(SystemExit):
        main(
            ["generate", str(model.export), "--sampler", "DDIMSampler", "--sampler.steps", "2", "--text+=Hi"]
        )
    assert "steps" in capsys.readouterr().err  # the sampler's steps come from --steps


def test_collapse_repeats_flag_is_reported(model: Model, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = generate_in_process(capsys, model.export, SOURCES[0], "--collapse_repeats", "true")
    assert len(out) == 1 and "consecutive repeated tokens collapsed" in err
    _, plain = generate_in_process(capsys, model.export, SOURCES[0])
    assert "collapsed" not in plain and "repeat penalty" not in plain
    out, err = generate_in_process(capsys, model.export, SOURCES[0], "--repeat_penalty", "inf")  # as typed on a command line
    assert len(out) == 1 and "rounding with repeat penalty inf" in err


def test_bytes_that_are_not_utf8_are_replaced_never_fatal(model: Model, tmp_path: Path) -> None:
    """A line of stdin with invalid UTF-8 keeps its place (U+FFFD in the source), the other lines of its batch
    are decoded, and stderr counts the replaced lines."""
    data = b"Tom is here.\n\xff\xfe caf\xe9\nI felt cheated.\n"
    proc = subprocess.run(
        [*console_command(), "generate", str(model.export), "--batch_size", "4", "--output", str(tmp_path / "o.jsonl")],
        input=data, capture_output=True, env=console_env(), timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    err = proc.stderr.decode()
    assert "1 with bytes that are not UTF-8, replaced by U+FFFD" in err
    assert len(proc.stdout.decode("utf-8").splitlines()) == 3
    records = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["source"] for r in records] == ["Tom is here.", "\ufffd\ufffd caf\ufffd", "I felt cheated."]
    assert all(r["candidates"] > 0 for r in records)


def test_source_reader_counts_replacements_in_arguments() -> None:
    from lightning_diffusion.generate import SourceReader

    reader = SourceReader(["ok", "bad \udcff byte", "lone \ud800"])
    assert list(reader) == ["ok", "bad \ufffd byte", "lone \ufffd\ufffd\ufffd"]
    assert reader.replaced == 2
