"""Flushing denormal floats: the switch, the command's default and its opt-out."""

from __future__ import annotations

import pytest
import torch

from lightning_diffusion.denormals import ENV, flush_denormals, flush_denormals_unless_kept

TINY = 1e-40  # a float32 denormal (the smallest normal float32 is ~1.18e-38)


def small_product() -> float:
    return (torch.tensor([TINY * 1e10], dtype=torch.float32) * 1e-10).item()  # a normal times a small normal


@pytest.fixture(autouse=True)
def restore_flag():
    flushed_before = small_product() == 0.0
    yield
    flush_denormals(flushed_before)  # the rest of the test session runs as it did before


def test_flushing_zeroes_denormal_results_and_keeping_keeps_them() -> None:
    if not flush_denormals():
        pytest.skip("this CPU has no flush-to-zero mode")
    assert small_product() == 0.0
    assert flush_denormals(False)
    assert small_product() == pytest.approx(TINY, rel=1e-2)
    assert (torch.tensor([1e-30]) * 1e-5).item() == pytest.approx(1e-35, rel=1e-5)  # normal results are untouched


def test_the_command_flushes_unless_the_environment_keeps_denormals(monkeypatch: pytest.MonkeyPatch) -> None:
    if not flush_denormals():
        pytest.skip("this CPU has no flush-to-zero mode")
    flush_denormals(False)
    monkeypatch.delenv(ENV, raising=False)
    assert flush_denormals_unless_kept() and small_product() == 0.0
    flush_denormals(False)
    flush_denormals(True)
    monkeypatch.setenv(ENV, "keep")
    assert not flush_denormals_unless_kept() and small_product() != 0.0  # an earlier flush is undone
    monkeypatch.setenv(ENV, "sometimes")
    with pytest.raises(ValueError, match="LIGHTNING_DIFFUSION_DENORMALS must be 'flush'"):
        flush_denormals_unless_kept()
