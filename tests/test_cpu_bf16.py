"""bf16 mixed precision on CPU: the CPU-flag check, its warning, and every family training and decoding under
``--trainer.precision bf16-mixed`` with a first loss close to float32's."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from conftest import RECIPES_DIR

from lightning_diffusion import cpu_bf16
from lightning_diffusion.cpu_bf16 import native_bf16_cpu, warn_if_emulated

FAMILY_RECIPES = [
    "autoregressive/multi30k_en_de.yaml",
    "cdcd/multi30k_en_de.yaml",
    "difformer/multi30k_en_de.yaml",
    "diffuseq/multi30k_en_de.yaml",
    "discrete/multi30k_en_de.yaml",
    "seqdiffuseq/multi30k_en_de.yaml",
]


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    return path


def test_native_bf16_cpu_reads_the_flags(tmp_path: Path) -> None:
    assert native_bf16_cpu(_cpuinfo(tmp_path, "fpu sse avx2 avx512f avx512_bf16 avx512_vnni")) is True
    assert native_bf16_cpu(_cpuinfo(tmp_path, "fpu sse amx_tile amx_bf16")) is True
    # avx512f alone (Skylake, Zen 3 has no AVX-512 at all) emulates bf16; "avx512_bf16x" is not the flag.
    assert native_bf16_cpu(_cpuinfo(tmp_path, "fpu sse avx2 avx512f avx512_bf16x")) is False
    assert native_bf16_cpu(tmp_path / "missing") is None
    (tmp_path / "noflags").write_text("Processor\t: ARMv7\n")
    assert native_bf16_cpu(tmp_path / "noflags") is None


def test_warns_only_for_bf16_on_a_cpu_without_bf16_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.warns(UserWarning, match="bf16-mixed on a CPU without bf16 instructions"):
        assert warn_if_emulated("bf16-mixed", True, native=False) is True
    monkeypatch.setattr(cpu_bf16, "native_bf16_cpu", lambda: False)  # the default reads the CPU's flags
    with pytest.warns(UserWarning, match="bf16 is emulated there"):
        assert warn_if_emulated("bf16-true", True) is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_emulated("bf16-mixed", True, native=True) is False
        assert warn_if_emulated("bf16-mixed", False, native=False) is False  # a GPU
        assert warn_if_emulated("32-true", True, native=False) is False
        monkeypatch.setattr(cpu_bf16, "native_bf16_cpu", lambda: None)  # cannot tell (not Linux x86): no claim
        assert warn_if_emulated("bf16-mixed", True) is False


@pytest.mark.parametrize("key", FAMILY_RECIPES)
def test_family_trains_and_decodes_under_cpu_bf16_mixed(
    key: str, tmp_path: Path, tiny_overrides, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One seeded step in float32 and in bf16-mixed from the same weights and batch: the losses agree to bf16's
    precision (a dtype clash or a loss term computed from a wrongly cast tensor fails here), and the bf16 model
    then decodes the validation batch under autocast. The command warns on a CPU without bf16 instructions."""
    recipe = RECIPES_DIR / key
    fp32 = tiny_overrides(tmp_path / "fp32", recipe, max_steps=1, extra={"trainer.limit_val_batches": 0})
    loss32 = run_cli(["fit", "-c", str(recipe), *fp32]).trainer.callback_metrics["train/loss"].item()
    bf16 = tiny_overrides(tmp_path / "bf16", recipe, max_steps=1, val_check_interval=1, extra={"trainer.precision": "bf16-mixed"})
    monkeypatch.setattr(cpu_bf16, "native_bf16_cpu", lambda: False)
    with pytest.warns(UserWarning, match="without bf16 instructions"):
        cli = run_cli(["fit", "-c", str(recipe), *bf16])
    assert cli.trainer.precision == "bf16-mixed" and cli.trainer.global_step == 1
    assert cli.trainer.callback_metrics["train/loss"].item() == pytest.approx(loss32, rel=0.03)
    report = cli.model.last_report
    assert report.stage == "val" and report.step == 1 and 0.0 <= report.bleu <= 100.0
