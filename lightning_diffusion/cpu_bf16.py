"""bf16 mixed precision on CPU: whether this CPU computes bf16 natively, and a warning when it does not.

``--trainer.precision bf16-mixed`` runs the matmuls of the training
step in bf16 under CPU autocast. On a CPU with bf16 instructions (x86 ``avx512_bf16`` or ``amx_bf16``: AMD Zen 4+,
Intel Cooper Lake / Sapphire Rapids+) oneDNN's bf16 matmuls are several times faster than float32 ones; elsewhere
bf16 is emulated and the step gets slower than float32. Attention stays float32 on CPU
(:mod:`lightning_diffusion.attention`: PyTorch's CPU attention kernels are slower in bf16).
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16_cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """True when the CPU lists a bf16 instruction set (``avx512_bf16`` / ``amx_bf16``) in its flags, False when it
    lists flags without one, None when that cannot be told (no ``/proc/cpuinfo``: not Linux, or not x86)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return any(flag in value.split() for flag in NATIVE_FLAGS)
    return None


def warn_if_emulated(precision: str, on_cpu: bool, native: bool | None = None) -> bool:
    """Warn (on rank 0) when a bf16 precision runs on a CPU without bf16 instructions (slower than ``32-true``
    there). ``native`` defaults to :func:`native_bf16_cpu`. Returns whether it warned."""
    if not str(precision).startswith("bf16") or not on_cpu:
        return False
    native = native_bf16_cpu() if native is None else native
    if native is not False:
        return False
    rank_zero_warn(
        f"trainer.precision={precision} on a CPU without bf16 instructions (none of {', '.join(NATIVE_FLAGS)} in "
        "/proc/cpuinfo): bf16 is emulated there and this run is likely slower than with precision 32-true",
        category=UserWarning,
    )
    return True


__all__ = ["NATIVE_FLAGS", "native_bf16_cpu", "warn_if_emulated"]
