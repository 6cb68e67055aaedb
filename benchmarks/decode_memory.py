"""Peak memory of decoding many candidates per source: clamping and rounding over chunks of positions against
all positions at once (the behaviour before chunking).

The model is a DiffusionLM shaped like ``recipes/difformer/multi30k_en_de.yaml`` (encoder-decoder denoiser with
LayerNorm'd embeddings, sqrt schedule, length predictor), made small (width ``--dim``, ``--layers`` + ``--layers``
layers) but with a ``--vocab`` word vocabulary, built in Python with random weights and no tokenizer file. Its
length predictor is set to rank offsets 0, +1, -1, +2, ... first (as a trained one roughly does), so the length
beam's canvases are as long as the sources, plus a few positions.

One batch of ``--source-tokens`` source tokens (sources of ``--source-length`` tokens) is decoded with
``--length-beam`` x ``--noise-beam`` candidates per source, by DDIM with clamping at every step. Few sampling
steps (``--steps``, default 3): memory, not time, is measured, and every step has the same peak. Two things are
measured, each with the default chunks (``Sampler.chunk_rows = None``: about 64 MiB of scores per chunk) and
unchunked (``chunk_rows`` covering every position, as before the change):

- ``sample``: encode, repeat the conditioning per candidate, ``Sampler.sample`` on a canvas of
  ``--source-length`` positions (denoiser steps, clamping, final rounding to token ids);
- ``generate``: ``DiffusionLM.generate`` (length beam, sampling, rounding, detokenizing with a stand-in
  tokenizer, MBR).

Memory is the peak resident set size above the RSS before the call (VmHWM reset via ``/proc/self/clear_refs``),
and on CUDA also ``torch.cuda.max_memory_allocated`` above the allocation before the call. An unchunked decode
whose estimated peak (two ``[positions, V]`` score matrices) is over ``--unchunked-limit-gib`` is measured at
fewer sources instead, and its peak at the full batch is extrapolated linearly in the number of positions
(marked as extrapolated). Writes ``results/decode_memory.json`` and ``.md``.

    python -m benchmarks.decode_memory
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    DEFAULT_RESULTS,
    Progress,
    current_rss_bytes,
    envelope,
    parameter_count,
    peak_rss_bytes,
    rel,
    reset_peak_rss,
    trim_heap,
    write_json,
)
from lightning_diffusion.candidates import candidate_layout, length_groups

UNCHUNKED = sys.maxsize  # chunk_rows covering every position: the one-shot scores of before
GIB = 2**30


class StandInTokenizer:
    """Just enough of a tokenizer for ``DiffusionLM.generate``: id ``i`` decodes to the word ``w<i>``; ids 0-3
    are special (pad 0, EOS 2)."""

    pad_token_id = 0
    eos_token_id = 2

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return " ".join(f"w{i}" for i in ids if i >= 4 or not skip_special_tokens)


def build_model(opts: Any) -> Any:
    """The Difformer-shaped DiffusionLM (random weights, eval mode) with the stand-in tokenizer attached."""
    from lightning_diffusion import DiffusionLM
    from lightning_diffusion.denoisers import EncoderDecoderDenoiser
    from lightning_diffusion.length import LengthPredictor
    from lightning_diffusion.losses import X0MSE, AnchorNLL, LengthNLL
    from lightning_diffusion.samplers import DDIMSampler
    from lightning_diffusion.schedules import SqrtSchedule

    torch.manual_seed(opts.seed)
    denoiser = functools.partial(
        EncoderDecoderDenoiser,
        latent_dim=opts.dim,
        hidden_dim=opts.dim,
        encoder_layers=opts.layers,
        decoder_layers=opts.layers,
        num_heads=opts.heads,
        ffn_dim=4 * opts.dim,
        dropout=0.1,
        max_positions=256,
        embedding_norm=True,
    )
    module = DiffusionLM(
        denoiser=denoiser,
        schedule=SqrtSchedule(num_steps=2000),
        loss_terms=[X0MSE(), AnchorNLL(label_smoothing=0.1), LengthNLL(weight=0.1)],
        sampler=DDIMSampler(steps=opts.steps, eta=0.0, clamp=True, noise_factor=1.0),
        length_predictor=functools.partial(LengthPredictor, max_offset=64),
        length_beam=opts.length_beam,
        noise_beam=opts.noise_beam,
        max_length=96,
        vocab_size=opts.vocab,
    )
    head = module.length_predictor.head[-1]  # offsets ranked 0, +1, -1, +2, -2, ...
    offsets = torch.arange(head.out_features) - module.length_predictor.max_offset
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(-offsets.abs().float() - 0.5 * (offsets < 0).float())
    module.attach_tokenizer(StandInTokenizer(opts.vocab), "stand-in")
    return module.eval()


def sources(n: int, length: int, vocab: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random sources of ``length`` tokens: ids ``[n, length]`` (no special ids) and an all-True mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (n, length), generator=gen)
    return ids.to(device), torch.ones(n, length, dtype=torch.bool, device=device)


def measured(fn: Callable[[], Any], device: str) -> tuple[Any, dict[str, Any]]:
    """Run ``fn`` once; its peak RSS above the RSS before the call (and on CUDA the allocation peak)."""
    trim_heap()
    exact = reset_peak_rss()
    base = current_rss_bytes() or 0
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    row: dict[str, Any] = {
        "seconds": round(time.perf_counter() - start, 2),
        "peak_rss_bytes": max(0, peak_rss_bytes() - base),
        "rss_peak_exact": exact,
    }
    if device == "cuda":
        row["cuda_peak_bytes"] = torch.cuda.max_memory_allocated() - cuda_base
    return out, row


def decode(
    module: Any, what: str, n_sources: int, chunk_rows: int | None, opts: Any, device: str
) -> dict[str, Any]:
    """Decode ``n_sources`` sources (``what`` = ``sample`` or ``generate``) and measure it."""
    src_ids, src_mask = sources(n_sources, opts.source_length, opts.vocab, opts.seed, device)
    per_source = module.length_beam * module.noise_beam
    module.sampler.chunk_rows = chunk_rows
    generator = torch.Generator(device=device).manual_seed(opts.seed)

    def run_sample() -> Any:
        cond = module.denoiser.encode(src_ids, src_mask).repeat_interleave(per_source)
        return module.sampler.sample(
            module.denoiser, module.schedule, cond, opts.source_length, None, generator
        )

    def run_generate() -> Any:
        return module.generate(src_ids, src_mask, generator)

    try:
        with torch.no_grad():
            out, row = measured(run_sample if what == "sample" else run_generate, device)
    finally:
        module.sampler.chunk_rows = None
    if what == "sample":
        positions = largest = int(out.token_ids.numel())
        output: Any = out.token_ids.cpu()
    else:
        with torch.no_grad():
            cond = module.denoiser.encode(src_ids, src_mask)
            layout = candidate_layout(
                module.length_predictor, cond, src_mask, module.decoding, module.max_length, module.canvas_length(src_mask)
            )
        # Candidates decode in groups of similar length, each on a canvas as long as its longest row: the positions
        # the network runs over are the groups' sum; unchunked scoring builds one [rows x longest, V] matrix per group.
        lengths = layout.tgt_mask.sum(-1)
        sizes = [len(rows) * int(lengths[rows].max()) for rows in length_groups(lengths)]
        positions, largest = sum(sizes), max(sizes)
        output = out.texts
    return {
        "what": what,
        "chunking": "unchunked" if chunk_rows == UNCHUNKED else "chunked",
        "chunk_rows": None if chunk_rows == UNCHUNKED else chunk_rows,
        "sources": n_sources,
        "source_tokens": n_sources * opts.source_length,
        "candidates_per_source": per_source,
        "positions": positions,
        "one_score_matrix_bytes": largest * opts.vocab * 4,
        "extrapolated": False,
        **row,
        "_output": output,
    }


def unchunked_sizes(full: int, positions_per_source: int, limit_bytes: float, vocab: int) -> list[int]:
    """Source counts for the unchunked decode: ``[full]`` when two ``[positions, V]`` float32 matrices fit in
    ``limit_bytes``, else the largest ``full / 2^k`` that fits and half of it (for a linear fit)."""

    def estimate(n: int) -> float:
        return 2.0 * n * positions_per_source * vocab * 4

    if estimate(full) <= limit_bytes:
        return [full]
    n = full
    while n > 1 and estimate(n) > limit_bytes:
        n //= 2
    return sorted({max(1, n // 2), n})


def extrapolate(rows: list[dict[str, Any]], positions: int, key: str) -> float:
    """Linear fit of ``key`` against positions through the measured rows, evaluated at ``positions``."""
    rows = sorted(rows, key=lambda r: r["positions"])
    if len(rows) == 1 or rows[-1]["positions"] == rows[0]["positions"]:
        return rows[-1][key] * positions / rows[-1]["positions"]
    lo, hi = rows[0], rows[-1]
    slope = (hi[key] - lo[key]) / (hi["positions"] - lo["positions"])
    return hi[key] + slope * (positions - hi["positions"])


def gib(value: float | None) -> float | None:
    return None if value is None else round(value / GIB, 3)


def markdown(data: dict[str, Any]) -> str:
    """The results as a markdown section (``### ...``, a table, notes)."""
    from benchmarks.report import provenance, table

    s = data["settings"]
    cuda = data["device"] != "cpu"
    out = [
        f"### Decode memory: {s['candidates_per_source']} candidates per source, V = {s['vocab']:,} ({data['device']})",
        "",
        f"DiffusionLM shaped like the Difformer recipe (encoder-decoder, width {s['dim']}, {s['layers']} + {s['layers']} "
        f"layers, {data['model']['parameters']:,} parameters, random weights), length beam {s['length_beam']} x noise "
        f"beam {s['noise_beam']}, DDIM with clamping at every step, {s['steps']} sampling steps (few on purpose: "
        f"memory, not time, is measured; every step peaks alike). One batch of {s['source_tokens']:,} source tokens "
        f"({s['source_tokens'] // s['source_length']} sources of {s['source_length']} tokens). `sample` = encode + "
        f"`Sampler.sample` on a {s['source_length']}-position canvas (clamping and final rounding); `generate` = "
        f"`DiffusionLM.generate` (length beam, sampling, rounding, stand-in detokenizer, MBR). Chunked = default "
        f"chunks (about 64 MiB of scores); unchunked = one chunk over every position (before the change). Memory: "
        f"{data['memory_method']}. Rows marked *extrapolated* were not run at that size (see below).",
        "",
    ]
    headers = [
        "what",
        "chunking",
        "sources",
        "candidate positions",
        "one [positions, V] matrix (GiB)",
        "peak RSS (GiB)",
    ]
    if cuda:
        headers.append("CUDA peak (GiB)")
    headers += ["time (s)", "note"]
    rows = []
    for r in data["results"]:
        row = [
            r["what"],
            r["chunking"],
            r["sources"],
            r["positions"],
            gib(r["one_score_matrix_bytes"]),
            gib(r["peak_rss_bytes"]),
        ]
        if cuda:
            row.append(gib(r.get("cuda_peak_bytes")))
        note = "*extrapolated*" if r["extrapolated"] else ""
        if r.get("same_output_as_chunked") is not None:
            note += f"{'; ' if note else ''}same output as chunked: {'yes' if r['same_output_as_chunked'] else 'NO'}"
        row += [r.get("seconds"), note]
        rows.append(row)
    out.append(table(headers, rows))
    if data.get("extrapolation"):
        out += ["", data["extrapolation"]]
    out.append("")
    out.append(provenance(data))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.decode_memory", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary size V")
    parser.add_argument("--source-tokens", type=int, default=4096, help="source tokens in the batch")
    parser.add_argument("--source-length", type=int, default=32, help="tokens per source")
    parser.add_argument("--length-beam", type=int, default=7)
    parser.add_argument("--noise-beam", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="sampling steps (clamping at each)")
    parser.add_argument("--dim", type=int, default=128, help="model and latent width")
    parser.add_argument("--layers", type=int, default=2, help="encoder layers = decoder layers")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument(
        "--unchunked-limit-gib",
        type=float,
        default=None,
        help="largest estimated peak of an unchunked decode that is run; bigger ones are run at fewer sources and "
        "extrapolated (default: 4 on CPU, 80%% of the free GPU memory on CUDA)",
    )
    parser.add_argument("--skip-generate", action="store_true", help="measure sample only")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    opts = parser.parse_args(argv)
    if opts.source_tokens < opts.source_length or opts.source_length < 1:
        parser.error("need --source-tokens >= --source-length >= 1")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if opts.device == "auto" else opts.device
    if opts.unchunked_limit_gib is not None:
        limit = opts.unchunked_limit_gib * GIB
    elif device == "cuda":
        limit = 0.8 * torch.cuda.mem_get_info()[0]
    else:
        limit = 4.0 * GIB
    say = Progress("decode_memory")
    per_source = opts.length_beam * opts.noise_beam
    full = opts.source_tokens // opts.source_length
    settings = {
        "vocab": opts.vocab,
        "source_tokens": full * opts.source_length,
        "source_length": opts.source_length,
        "length_beam": opts.length_beam,
        "noise_beam": opts.noise_beam,
        "candidates_per_source": per_source,
        "steps": opts.steps,
        "dim": opts.dim,
        "layers": opts.layers,
        "heads": opts.heads,
        "unchunked_limit_gib": round(limit / GIB, 3),
        "seed": opts.seed,
    }
    data = envelope("decode_memory", argv, "benchmarks.decode_memory", settings)
    module = build_model(opts).to(device)
    data.update(
        device=device if device == "cpu" else f"cuda ({torch.cuda.get_device_name(0)})",
        model={"parameters": parameter_count(module), "decoding": module.decoding_settings()},
        memory_method="peak RSS (VmHWM, reset via /proc/self/clear_refs) above the RSS before the call"
        + (
            "; CUDA: torch.cuda.max_memory_allocated above the allocation before the call"
            if device == "cuda"
            else ""
        ),
        results=[],
    )
    started = time.perf_counter()
    notes = []
    for what in ["sample"] if opts.skip_generate else ["sample", "generate"]:
        longest = opts.source_length + (
            opts.length_beam // 2 if what == "generate" else 0
        )  # offsets 0, +1, -1, ...
        positions_per_source = per_source * longest
        small = unchunked_sizes(full, positions_per_source, limit, opts.vocab)
        decode(module, what, 1, None, opts, device)  # warm-up: one-time allocations stay out of the peaks
        chunked: dict[int, dict[str, Any]] = {}
        for n in sorted({*small, full}):
            chunked[n] = decode(module, what, n, None, opts, device)
            say(
                f"{what} chunked, {n} sources: peak RSS {gib(chunked[n]['peak_rss_bytes'])} GiB ({chunked[n]['seconds']} s)"
            )
        unchunked = []
        for n in small:
            row = decode(module, what, n, UNCHUNKED, opts, device)
            row["same_output_as_chunked"] = (
                row["_output"] == chunked[n]["_output"]
                if what == "generate"
                else bool(torch.equal(row["_output"], chunked[n]["_output"]))
            )
            unchunked.append(row)
            say(
                f"{what} unchunked, {n} sources: peak RSS {gib(row['peak_rss_bytes'])} GiB ({row['seconds']} s)"
            )
        rows = [chunked[n] for n in sorted(chunked)] + unchunked
        if small != [full]:
            target = chunked[full]["positions"]
            guess = {
                **unchunked[-1],
                "sources": full,
                "source_tokens": full * opts.source_length,
                "positions": target,
                "one_score_matrix_bytes": target * opts.vocab * 4,
                "extrapolated": True,
                "seconds": None,
                "same_output_as_chunked": None,
                "peak_rss_bytes": int(extrapolate(unchunked, target, "peak_rss_bytes")),
            }
            if device == "cuda":
                guess["cuda_peak_bytes"] = int(extrapolate(unchunked, target, "cuda_peak_bytes"))
            rows.append(guess)
            notes.append(
                f"`{what}` unchunked at {full} sources would need about {gib(2 * target * opts.vocab * 4)} GiB for two "
                f"[positions, V] float32 matrices, over the {settings['unchunked_limit_gib']} GiB limit "
                f"(`--unchunked-limit-gib`): it was run at {', '.join(map(str, small))} sources and its peak at {full} "
                f"sources is extrapolated linearly in the number of positions ({gib(guess['peak_rss_bytes'])} GiB RSS; "
                "an upper bound for `generate`, whose candidates decode in length groups, each scoring only its own "
                "positions)."
            )
            say(f"{what} unchunked, {full} sources: extrapolated peak RSS {gib(guess['peak_rss_bytes'])} GiB")
        for row in rows:
            row.pop("_output", None)
            data["results"].append(row)
    data["extrapolation"] = " ".join(notes) if notes else None
    data["wall_seconds"] = round(time.perf_counter() - started, 1)
    path = write_json(Path(opts.results_dir) / "decode_memory.json", data)
    path.with_suffix(".md").write_text(markdown(data) + "\n", encoding="utf-8")
    say(f"wrote {rel(path)} ({data['wall_seconds']:.0f} s)")
    return path


if __name__ == "__main__":
    main()
