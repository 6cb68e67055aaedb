"""Attention time and peak memory: ``lightning_diffusion.attention.attention`` against a naive softmax attention
that materialises the ``B x H x L x L`` score matrix, for sequence lengths 128 .. 2048.

On CPU the library uses PyTorch SDPA; on CUDA (when present) it is measured with each backend it has
(xformers when it works, SDPA) next to the naive version. Forward (no grad) and forward + backward are timed
separately (median of ``--repeats`` after ``--warmup``); peak memory is measured around one call:
``torch.cuda.max_memory_allocated`` on CUDA, peak RSS above the RSS before the call on CPU (see
``benchmarks.common.peak_memory``). Writes ``results/attention.json`` and ``.md`` and ``results/attention.png``.

    python -m benchmarks.attention
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import DEFAULT_RESULTS, Progress, envelope, peak_memory, rel, write_json
from lightning_diffusion import attention as attn


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` with the full score matrix; layout ``[B, M, H, K]`` like the library's."""
    scores = torch.einsum("bmhk,bnhk->bhmn", q, k) * q.shape[-1] ** -0.5
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    return torch.einsum("bhmn,bnhk->bmhk", scores.softmax(-1), v)


def library(backend: str) -> Callable[..., torch.Tensor]:
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attn.set_backend(backend)
        try:
            return attn.attention(q, k, v, mask)
        finally:
            attn.set_backend(None)

    return run


def implementations(device: str) -> list[tuple[str, Callable[..., torch.Tensor]]]:
    impls: list[tuple[str, Callable[..., torch.Tensor]]] = []
    if device == "cuda" and attn.xformers_available():
        impls.append(("library (xformers)", library("xformers")))
    impls.append(("library (SDPA)", library("sdpa")))
    impls.append(("naive", naive_attention))
    return impls


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(
    name: str,
    fn: Callable[..., torch.Tensor],
    length: int,
    opts: Any,
    device: str,
    dtype: torch.dtype,
    reference: torch.Tensor | None,
) -> tuple[dict[str, Any], torch.Tensor | None]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    shape = (opts.batch, length, opts.heads, opts.head_dim)
    q, k, v = (torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    mask = torch.ones(opts.batch, length, dtype=torch.bool, device=device)
    cut = length - int(round(opts.masked_fraction * length))
    mask[opts.batch // 2 :, cut:] = False  # half the rows padded at the end
    row: dict[str, Any] = {
        "implementation": name,
        "length": length,
        "score_matrix_bytes": opts.batch * opts.heads * length * length * torch.finfo(dtype).bits // 8,
    }
    out = None
    try:
        with torch.no_grad():
            row["forward_ms"] = round(timed(lambda: fn(q, k, v, mask), device, opts.warmup, opts.repeats), 3)
            with peak_memory(device) as mem:
                out = fn(q, k, v, mask)
            row["forward_peak_bytes"] = mem["peak_bytes"]
        if reference is not None and out is not None:
            row["max_abs_diff_vs_naive"] = float((out.float() - reference.float()).abs().max())
        if opts.backward:
            qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))

            def fwd_bwd() -> None:
                for t in (qg, kg, vg):
                    t.grad = None
                fn(qg, kg, vg, mask).float().sum().backward()

            row["forward_backward_ms"] = round(timed(fwd_bwd, device, opts.warmup, opts.repeats), 3)
            with peak_memory(device) as mem:
                fwd_bwd()
            row["forward_backward_peak_bytes"] = mem["peak_bytes"]
    except (RuntimeError, MemoryError) as err:  # out of memory at long lengths: record it
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        out = None
    return row, out


def ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.attention", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--lengths", type=ints, default=[128, 256, 512, 1024, 2048], help="sequence lengths")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--masked-fraction", type=float, default=0.1, help="padded keys in half the rows")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-backward", dest="backward", action="store_false", help="time the forward only")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "float16", "bfloat16"],
        default="auto",
        help="auto: float32 on CPU, float16 on CUDA",
    )
    parser.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    parser.add_argument("--no-plots", action="store_true")
    opts = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if opts.device == "auto" else opts.device
    dtype_name = opts.dtype if opts.dtype != "auto" else ("float16" if device == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    say = Progress("attention")
    settings = {
        "lengths": opts.lengths,
        "batch": opts.batch,
        "heads": opts.heads,
        "head_dim": opts.head_dim,
        "masked_fraction": opts.masked_fraction,
        "warmup": opts.warmup,
        "repeats": opts.repeats,
        "backward": opts.backward,
        "dtype": dtype_name,
    }
    data = envelope("attention", argv, "benchmarks.attention", settings)
    data.update(device=device if device == "cpu" else f"cuda ({torch.cuda.get_device_name(0)})", results=[])
    started = time.perf_counter()
    for length in opts.lengths:
        reference = None
        impls = implementations(device)
        # naive first: its output is the reference for the others
        for name, fn in sorted(impls, key=lambda item: item[0] != "naive"):
            row, out = measure(name, fn, length, opts, device, dtype, reference)
            if name == "naive":
                reference = out
            data["results"].append(row)
            data["memory_method"] = (
                "torch.cuda.max_memory_allocated above the allocation before the call"
                if device == "cuda"
                else "peak RSS (VmHWM, reset via /proc/self/clear_refs before the call) above the RSS before the call"
            )
            say(
                f"L={length} {name}: forward {row.get('forward_ms')} ms, fwd+bwd {row.get('forward_backward_ms')} ms, "
                f"peak +{(row.get('forward_peak_bytes') or 0) / 2**20:.1f} MiB {row.get('error', '')}"
            )
    data["wall_seconds"] = round(time.perf_counter() - started, 1)
    path = write_json(Path(opts.results_dir) / "attention.json", data)
    from benchmarks import report

    report.write_benchmark_outputs(path, plots=not opts.no_plots)
    say(f"wrote {rel(path)} ({data['wall_seconds']:.0f} s)")
    return path


if __name__ == "__main__":
    main()
