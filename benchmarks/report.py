"""Markdown tables and PNG plots from the benchmarks' JSON, and ``benchmarks/RESULTS.md`` from all of them.

python -m benchmarks.report                      # results/*.json -> results/*.md, results/*.png, RESULTS.md
python -m benchmarks.report --results-dir DIR --output FILE
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_DIR, DEFAULT_RESULTS, now_iso, read_json

ORDER = ("translation", "summarization", "speed", "throughput", "attention")


# ---------------------------------------------------------------------------------------------- helpers
def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.2g}"
        return f"{value:,.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    load = m.get("load_average_1m_5m_15m")
    parts = [
        f"{m.get('cpu_model', '?')}, {m.get('cpu_cores', '?')} cores ({m.get('torch_threads', '?')} torch threads)",
        f"{m.get('memory_total_gib', '?')} GiB RAM",
        f"torch {m.get('torch', '?')}, lightning {m.get('lightning', '?')}, Python {m.get('python', '?')}",
    ]
    if m.get("cuda_device"):
        parts.append(f"GPU {m['cuda_device']}")
    if load:
        parts.append(f"load average at start {load[0]:.2f}")
    return "; ".join(parts)


def provenance(data: dict[str, Any]) -> str:
    wall = data.get("wall_seconds")
    wall_text = f", took {wall / 60:.1f} min" if isinstance(wall, (int, float)) else ""
    return (
        f"Command: `{data.get('command', '?')}` — run {data.get('date', '?')}{wall_text}.  \n"
        f"Machine: {machine_line(data)}."
    )


def why(entry: dict[str, Any]) -> str:
    """One line saying why a system was skipped or failed (the last error-looking line of its message)."""
    text = entry.get("reason") or entry.get("error") or (entry.get("train") or {}).get("error") or ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    strong = [line for line in lines if re.match(r"^([\w.]+(Error|Exception)|error):", line)]
    weak = [line for line in lines if "error" in line.lower() or "exception" in line.lower()]
    line = (strong or weak or lines or [""])[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def _int(value: Any) -> Any:
    return None if value is None else int(round(value))


def mib(value: Any) -> Any:
    return None if value is None else value / 2**20


# ---------------------------------------------------------------------------------------------- quality
HEALTH = (
    ("empty_hypotheses", "empty"),
    ("replacement_char_hypotheses", "U+FFFD"),
    ("repeated_word_hypotheses", "repeated word (repetition rate)"),
    ("repeated_bigram_hypotheses", "repeated bigram"),
    ("unseen_word_hypotheses", "unseen word"),
)


def count_rate(ev: dict[str, Any], key: str) -> str:
    """``"3 (0.3%)"``: an output-health count and its share of the hypotheses; ``–`` when not recorded."""
    count = ev.get(key)
    if count is None:
        return "–"
    rate = ev.get(f"{key}_rate")
    if rate is None and ev.get("sentences"):
        rate = count / ev["sentences"]
    return f"{count:,} ({rate:.1%})" if rate is not None else f"{count:,}"


def budget_text(s: dict[str, Any]) -> str:
    """How long every system trained: CPU-minutes (current files) or wall-clock minutes (the first files)."""
    if s.get("budget_cpu_minutes") is not None:
        preset = f" (preset `{s['preset']}`)" if s.get("preset") and s["preset"] != "smoke" else ""
        return (
            f"Every system trained for {s['budget_cpu_minutes']:g} CPU-minutes{preset}: process CPU time of the "
            f"training process (all threads) from its first training batch (tokenizer, data loading, model setup and "
            f"snapshot saving not counted), so a busy machine does not change how much computation a system gets; "
            f"`trainer.max_time` {s.get('max_time_minutes', 0):g} wall-clock minutes only as a safety cap; "
            f"no validation during training"
        )
    return (
        f"Every system trained for {s['budget_minutes']:g} min of wall-clock training time "
        f"(`trainer.max_time`; tokenizer, data loading and model setup not counted; no validation during training)"
    )


def data_text(data: dict[str, Any]) -> list[str]:
    """The files actually read: the test file scored (and what it is, when known) and the training file(s)."""
    d = data["data"]
    origin = f", {d['test_origin']}" if d.get("test_origin") else ""
    lines = [
        f"Test set: {d['test_examples']:,} of {d['test_examples_total']:,} examples ({d['test_selection']}) of "
        f"`{d['test_file']}`{origin}."
    ]
    if d.get("test_references_unseen_words") is not None and d.get("test_examples"):
        n = d["test_references_unseen_words"]
        lines.append(
            f"Test references holding a word the training references never do: {n:,} of {d['test_examples']:,} "
            f"({n / d['test_examples']:.1%}), the level the unseen-word column is read against."
        )
    train = f"Training data: `{d['train_file']}`"
    if d.get("train_examples") is not None:
        train += f" ({d['train_examples']:,} pairs)"
    distill = d.get("distill")
    if distill:
        prov = distill.get("provenance") or {}
        made = (
            f"teacher `{prov.get('teacher')}` (step {fmt(prov.get('teacher_step'))}), decoding {prov.get('decoding')}"
            + (
                ""
                if distill.get("input_is_train_file")
                else "; distilled from another input than the training file"
            )
            if prov
            else "no provenance sidecar"
        )
        train += (
            f"; the systems marked *distilled* trained on `{distill['file']}` instead ({distill['pairs']:,} pairs; "
            f"{made})"
        )
    lines.append(train + ".")
    return lines


def quality_markdown(data: dict[str, Any]) -> str:
    kind, task, metric = data["benchmark"], data["task"], data["metric"]
    s = data["settings"]
    distilled_run = bool((data["data"].get("distill") or {}).get("file"))
    out = [
        f"### {kind.capitalize()}: {task}{' (distilled training data)' if distilled_run else ''}",
        "",
        data.get("note", ""),
        "",
        *data_text(data),
        f"{budget_text(s)}, "
        f"{'EMA as in the recipe' if s['ema_decay'] == 'recipe' else 'EMA decay ' + str(s['ema_decay'])}, "
        f"decoding seed {s['decode_seed']}.",
        "",
    ]
    if kind == "translation":
        headers = ["system", "distilled", "decoding", "BLEU"]
    else:
        headers = ["system", "distilled", "decoding", "ROUGE-1", "ROUGE-2", "ROUGE-L", "BLEU"]
    headers += [
        "params",
        "params / baseline",
        "train steps",
        "train CPU (s)",
        "train wall (s)",
        "sampling steps",
        "NFE (mean)",
        "length beam",
        "noise beam",
        "MBR size / beam",
        "decode (sentences/s)",
        *(label for _, label in HEALTH),
    ]
    rows, signatures, notes, capped = [], set(), [], []
    baseline = next(
        (
            sd.get("parameters")
            for sd in data["systems"]
            if sd.get("family") == "autoregressive" and sd.get("parameters")
        ),
        None,
    )
    for sysd in data["systems"]:
        name = sysd["system"]
        if sysd.get("status") != "ok":
            notes.append(f"- **{name}**: {sysd.get('status')} — {why(sysd)}")
            continue
        train = sysd.get("train", {})
        if train.get("budget_reached") is False:
            capped.append(name)
        ratio = sysd.get("parameters_vs_baseline")
        if ratio is None and baseline and sysd.get("parameters"):
            ratio = sysd["parameters"] / baseline
        for ev in sysd["evaluations"]:
            signatures.add(ev["bleu_signature"])
            scores = (
                [ev["bleu"]]
                if kind == "translation"
                else [ev["rouge1"], ev["rouge2"], ev["rougeL"], ev["bleu"]]
            )
            width = ev.get("beam_size") if ev.get("beam_size") is not None else ev.get("candidates")
            cpu = train.get("train_cpu_seconds")
            rows.append(
                [
                    name,
                    "yes" if sysd.get("distilled", train.get("distilled")) else "no",
                    ev["decoding"],
                    *scores,
                    sysd.get("parameters"),
                    f"{ratio:.0%}" if ratio is not None else "–",
                    train.get("steps"),
                    f"{fmt(cpu)} (stopped early)"
                    if cpu is not None and train.get("budget_reached") is False
                    else cpu,
                    train.get("train_seconds"),
                    ev.get("sampling_steps") if ev.get("sampling_steps") is not None else "– (1 per token)",
                    ev.get("nfe_mean"),
                    ev.get("length_beam"),
                    ev.get("noise_beam"),
                    width,
                    ev.get("sentences_per_second"),
                    *(count_rate(ev, key) for key, _ in HEALTH),
                ]
            )
    out.append(table(headers, rows))
    out.append("")
    if kind != "translation":
        out.append("ROUGE: F1 x 100, Porter stemming (rouge-score), single reference.  ")
    for sig in sorted(signatures):
        out.append(f"sacreBLEU signature: `{sig}`  ")
    out.append(
        "NFE: network calls per candidate sequence (diffusion: sampling steps; autoregressive: generated tokens, "
        "mean over batches). MBR size / beam: candidates decoded per source (length beam x noise beam, MBR picks "
        "one; or the beam size). Decode speed: test-set decoding with the evaluation batches, 1 process. "
        "params / baseline: parameters as a share of the autoregressive baseline's. Train CPU: process CPU seconds "
        "of training (the budget's clock); train wall: wall seconds of the same span. Output health, as count (share "
        "of the hypotheses): empty hypotheses (of a non-empty source), hypotheses containing U+FFFD, hypotheses with "
        "a word repeated back to back (the repetition rate), with two consecutive words seen twice (repeated "
        "bigram), with a word (sacreBLEU 13a tokens) found nowhere in the task's training references (unseen word: "
        "subword pieces glued into a non-word, or a rare name or number)."
    )
    out.append("")
    if capped:
        out.append(
            f"Stopped before the CPU budget was spent (the wall-clock cap or --max-steps): {', '.join(capped)}."
        )
        out.append("")
    curves = [(s_["system"], s_.get("curve") or []) for s_ in data["systems"] if s_.get("status") == "ok"]
    if any(points for _, points in curves):
        label = "BLEU" if metric == "bleu" else "ROUGE-L"
        cpu_clock = all(p.get("cpu_seconds") is not None for _, pts in curves for p in pts)
        clock_key, clock_name = (
            ("cpu_seconds", "training CPU seconds") if cpu_clock else ("train_seconds", "training seconds")
        )
        out.append(
            f"{label} against training time (first {s['curve_examples']} test examples, primary decoding):"
        )
        out.append("")
        out.append(
            table(
                ["system", f"{label} at ({clock_name}, step)"],
                [
                    [
                        name,
                        ", ".join(
                            f"{p[metric]:.2f} ({fmt(p[clock_key], 0)} s, {fmt(p['step'])})" for p in pts
                        ),
                    ]
                    for name, pts in curves
                    if pts
                ],
            )
        )
        out.append("")
    if notes:
        out += ["Not scored:", *notes, ""]
    out.append("Training commands:")
    out.append("")
    for sysd in data["systems"]:
        cmd = (sysd.get("train") or {}).get("command")
        if cmd:
            out.append(f"- {sysd['system']}: `{cmd}`")
    out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- speed
def speed_markdown(data: dict[str, Any]) -> str:
    s = data["settings"]
    out = [
        f"### Sampling speed: {data['task']}",
        "",
        f"Decoding the first sources of the test set ({s['speed_sentences']} sentences per setting, at least one "
        f"batch; batch sizes {s['batch_sizes']}); one warm-up decode first. Latency: wall time of one "
        f"`generate` call (one batch), torch threads {data['machine'].get('torch_threads')}. Checkpoints: "
        f"{data.get('checkpoints_from', '?')}.",
        "",
    ]
    rows, bleu_rows, notes = [], [], []
    for sysd in data["systems"]:
        if sysd.get("status") != "ok":
            notes.append(f"- **{sysd['system']}**: {sysd.get('status')} — {why(sysd)}")
            continue
        for r in sysd["speed"]:
            rows.append(
                [
                    sysd["system"],
                    r["decoding"],
                    r["sampling_steps"] if r["sampling_steps"] is not None else "–",
                    r["batch_size"],
                    r["candidates"],
                    r["nfe_mean"],
                    r["sentences_per_second"],
                    r["latency_ms_median"],
                    r["latency_ms_p90"],
                    r["ms_per_sentence"],
                ]
            )
        for r in sysd.get("bleu_vs_steps", []):
            bleu_rows.append(
                [
                    sysd["system"],
                    r["decoding"],
                    r["sampling_steps"] if r["sampling_steps"] is not None else "–",
                    r["bleu"],
                    r["nfe_mean"],
                    r["candidates"],
                    r["sentences"],
                    r["sentences_per_second"],
                ]
            )
    out.append(
        table(
            [
                "system",
                "decoding",
                "sampling steps",
                "batch size",
                "candidates / source",
                "NFE (mean)",
                "sentences/s",
                "latency median (ms/batch)",
                "latency p90 (ms/batch)",
                "ms/sentence",
            ],
            rows,
        )
    )
    out.append("")
    if bleu_rows:
        sig = next(
            (r.get("bleu_signature") for sd in data["systems"] for r in sd.get("bleu_vs_steps", [])), None
        )
        out.append(
            f"BLEU against sampling steps (first {s['bleu_examples']} test examples, evaluation batches):"
        )
        out.append("")
        out.append(
            table(
                [
                    "system",
                    "decoding",
                    "sampling steps",
                    "BLEU",
                    "NFE (mean)",
                    "candidates / source",
                    "sentences",
                    "sentences/s",
                ],
                bleu_rows,
            )
        )
        out.append("")
        if sig:
            out.append(f"sacreBLEU signature: `{sig}`")
            out.append("")
    if notes:
        out += ["Not measured:", *notes, ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- throughput
def throughput_markdown(data: dict[str, Any]) -> str:
    s = data["settings"]
    out = [
        f"### Training throughput: {data['task']}",
        "",
        f"{s['steps']} timed optimizer steps after {s['warmup_steps']} warm-up steps, the same batches (token budget "
        f"from the recipe + overlay) in both loops, each in a fresh process. Tokens: non-padding source + target "
        f"tokens (target includes its EOS). Lightning: `Trainer.fit` (no logger, checkpointing or progress bar; "
        f"the recipe's gradient clipping); bare: `compute_losses` / `backward` / clip / `step` / scheduler. "
        f"Memory: {data.get('memory_method', '?')}.",
        "",
    ]
    rows, notes = [], []
    for sysd in data["systems"]:
        if sysd.get("status") != "ok":
            notes.append(f"- **{sysd['system']}**: {sysd.get('status')} — {why(sysd)}")
            continue
        modes = sysd["modes"]
        lt, bt = modes.get("lightning", {}), modes.get("bare", {})
        rows.append(
            [
                sysd["system"],
                sysd.get("parameters"),
                _int(lt.get("tokens_per_second")),
                _int(bt.get("tokens_per_second")),
                sysd.get("overhead_ratio"),
                lt.get("ms_per_step"),
                bt.get("ms_per_step"),
                mib(lt.get("peak_memory_bytes")),
                mib(bt.get("peak_memory_bytes")),
                lt.get("fit_wall_seconds"),
            ]
        )
    out.append(
        table(
            [
                "system",
                "params",
                "Lightning (tokens/s)",
                "bare loop (tokens/s)",
                "overhead ratio (Lightning time / bare time)",
                "Lightning (ms/step)",
                "bare (ms/step)",
                "Lightning peak mem (MiB)",
                "bare peak mem (MiB)",
                "Trainer.fit wall (s, incl. setup)",
            ],
            rows,
        )
    )
    out.append("")
    out.append(
        "Overhead ratio = tokens/s of the bare loop divided by tokens/s under Lightning (1.00 = no overhead; 1.10 = "
        "Lightning's step takes 10% longer)."
    )
    out.append("")
    if notes:
        out += ["Not measured:", *notes, ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- attention
def attention_markdown(data: dict[str, Any]) -> str:
    s = data["settings"]
    out = [
        f"### Attention: `lightning_diffusion.attention.attention` against naive softmax attention ({data['device']})",
        "",
        f"Self-attention, batch {s['batch']}, {s['heads']} heads, head dim {s['head_dim']}, {s['dtype']}, key padding "
        f"mask on {s['masked_fraction']:.0%} of the keys of half the rows; median of {s['repeats']} timed runs after "
        f"{s['warmup']} warm-up. Memory: {data.get('memory_method', '?')}. Naive = `softmax(q k^T / sqrt(d))` "
        f"materialised, masked with -inf, times v.",
        "",
    ]
    rows = []
    for r in data["results"]:
        rows.append(
            [
                r["implementation"],
                r["length"],
                r.get("forward_ms"),
                r.get("forward_backward_ms"),
                mib(r.get("forward_peak_bytes")),
                mib(r.get("forward_backward_peak_bytes")),
                mib(r.get("score_matrix_bytes")),
                r.get("max_abs_diff_vs_naive"),
                r.get("error") or "",
            ]
        )
    out.append(
        table(
            [
                "implementation",
                "length",
                "forward (ms)",
                "forward+backward (ms)",
                "forward peak (MiB)",
                "forward+backward peak (MiB)",
                "one B×H×L×L score matrix (MiB)",
                "max abs diff vs naive",
                "note",
            ],
            rows,
        )
    )
    out.append("")
    return "\n".join(out)


MARKDOWN = {
    "translation": quality_markdown,
    "summarization": quality_markdown,
    "speed": speed_markdown,
    "throughput": throughput_markdown,
    "attention": attention_markdown,
}


# ---------------------------------------------------------------------------------------------- plots
def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot(data: dict[str, Any], results_dir: Path) -> list[Path]:
    """PNG plots for one benchmark's JSON; [] without matplotlib (install the ``bench`` extra)."""
    plt = _pyplot()
    if plt is None:
        print("matplotlib not installed (pip install -e '.[bench]'): no plots", flush=True)
        return []
    kind = data["benchmark"]
    written: list[Path] = []
    if kind in ("translation", "summarization"):
        metric = data["metric"]
        label = "BLEU" if metric == "bleu" else "ROUGE-L (F1 x100)"
        ok = [sd for sd in data["systems"] if sd.get("status") == "ok"]
        cpu_clock = all(p.get("cpu_seconds") is not None for sd in ok for p in sd.get("curve") or [])
        clock = "cpu_seconds" if cpu_clock else "train_seconds"
        distilled = bool((data.get("data", {}).get("distill") or {}).get("file"))
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        drawn = False
        for sysd in ok:
            pts = [p for p in sysd.get("curve") or [] if p.get(clock) is not None]
            if pts:
                ax.plot(
                    [p[clock] for p in pts],
                    [p[metric] for p in pts],
                    marker="o",
                    label=sysd["system"] + (" (distilled)" if sysd.get("distilled") else ""),
                )
                drawn = True
        if drawn:
            ax.set_xlabel("training time (process CPU s)" if cpu_clock else "training time (s, CPU)")
            ax.set_ylabel(f"{label}, first {data['settings']['curve_examples']} test examples")
            ax.set_title(
                f"{data['task']}: {label} vs training time{' (distilled data)' if distilled else ''}"
            )
            ax.grid(alpha=0.3)
            ax.legend()
            path = (
                results_dir
                / f"{metric}_vs_training_time_{data['task']}{'_distilled' if distilled else ''}.png"
            )
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            written.append(path)
        plt.close(fig)
    elif kind == "speed":
        systems = [sd for sd in data["systems"] if sd.get("status") == "ok"]
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        drawn = False
        for sysd in systems:
            pts = [r for r in sysd.get("bleu_vs_steps", []) if r["sampling_steps"] is not None]
            if pts:
                ax.plot(
                    [r["sampling_steps"] for r in pts],
                    [r["bleu"] for r in pts],
                    marker="o",
                    label=sysd["system"],
                )
                drawn = True
            for r in sysd.get("bleu_vs_steps", []):
                if r["sampling_steps"] is None:
                    ax.axhline(
                        r["bleu"],
                        linestyle="--",
                        alpha=0.7,
                        label=f"{sysd['system']} {r['decoding']}",
                        color="gray" if "greedy" in r["decoding"] else "black",
                    )
                    drawn = True
        if drawn:
            ax.set_xscale("log")
            ax.set_xlabel("sampling steps (log)")
            ax.set_ylabel(f"BLEU, first {data['settings']['bleu_examples']} test examples")
            ax.set_title(f"{data['task']}: BLEU vs sampling steps")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = results_dir / "bleu_vs_steps.png"
            fig.savefig(path, dpi=110)
            written.append(path)
        plt.close(fig)
        if systems:
            fig, axes = plt.subplots(
                1, len(systems), figsize=(3.2 * len(systems), 3.6), sharey=True, squeeze=False
            )
            for ax, sysd in zip(axes[0], systems, strict=True):
                by_decoding: dict[str, list[dict[str, Any]]] = {}
                for r in sysd["speed"]:
                    by_decoding.setdefault(r["decoding"], []).append(r)
                for name, pts in by_decoding.items():
                    pts = sorted(pts, key=lambda r: r["batch_size"])
                    ax.plot(
                        [r["batch_size"] for r in pts],
                        [r["sentences_per_second"] for r in pts],
                        marker="o",
                        label=name,
                    )
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_title(sysd["system"], fontsize=10)
                ax.set_xlabel("batch size (sentences)")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
            axes[0][0].set_ylabel("sentences/s")
            fig.suptitle(f"{data['task']}: decoding throughput vs batch size (CPU)", fontsize=10)
            fig.tight_layout()
            path = results_dir / "sentences_per_s_vs_batch.png"
            fig.savefig(path, dpi=110)
            written.append(path)
            plt.close(fig)
    elif kind == "attention":
        rows = [r for r in data["results"] if not r.get("error")]
        if rows:
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
            for impl in dict.fromkeys(r["implementation"] for r in rows):
                pts = sorted((r for r in rows if r["implementation"] == impl), key=lambda r: r["length"])
                xs = [r["length"] for r in pts]
                ax1.plot(xs, [r.get("forward_ms") for r in pts], marker="o", label=f"{impl} forward")
                if any(r.get("forward_backward_ms") is not None for r in pts):
                    ax1.plot(
                        xs,
                        [r.get("forward_backward_ms") for r in pts],
                        marker="s",
                        linestyle="--",
                        label=f"{impl} fwd+bwd",
                    )
                ax2.plot(
                    xs, [mib(r.get("forward_peak_bytes")) for r in pts], marker="o", label=f"{impl} forward"
                )
                if any(r.get("forward_backward_peak_bytes") is not None for r in pts):
                    ax2.plot(
                        xs,
                        [mib(r.get("forward_backward_peak_bytes")) for r in pts],
                        marker="s",
                        linestyle="--",
                        label=f"{impl} fwd+bwd",
                    )
            for ax, ylabel in ((ax1, "time (ms)"), (ax2, "peak memory above baseline (MiB)")):
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")  # zero memory deltas (tiny lengths) are left out
                ax.set_xlabel("sequence length")
                ax.set_ylabel(ylabel)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
            fig.suptitle(f"attention on {data['device']}", fontsize=10)
            fig.tight_layout()
            path = results_dir / "attention.png"
            fig.savefig(path, dpi=110)
            written.append(path)
            plt.close(fig)
    return written


# ---------------------------------------------------------------------------------------------- outputs
def write_benchmark_outputs(json_path: Path, plots: bool = True) -> list[Path]:
    """``<name>.md`` next to ``<name>.json`` and the benchmark's plots."""
    json_path = Path(json_path)
    data = read_json(json_path)
    md = json_path.with_suffix(".md")
    md.write_text(MARKDOWN[data["benchmark"]](data) + "\n" + provenance(data) + "\n", encoding="utf-8")
    written = [md]
    if plots:
        written += plot(data, json_path.parent)
    return written


def result_files(results_dir: Path) -> list[Path]:
    files = []
    for kind in ORDER:
        files += sorted(
            p for p in Path(results_dir).glob("*.json") if p.stem == kind or p.stem.startswith(kind + "_")
        )
    return files


def write_results_md(results_dir: Path, output: Path, plots: bool = True) -> Path:
    results_dir, output = Path(results_dir), Path(output)
    files = result_files(results_dir)
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python -m benchmarks.report` on {now_iso()} from `{_rel_to(results_dir, output.parent)}/*.json`; "
        "how to run each benchmark: [benchmarks/README.md](README.md). Every number below states its units and "
        "settings; each section names the exact command, the date and the machine it ran on.",
        "",
    ]
    run_all = Path(results_dir) / "run_all.json"
    if run_all.is_file():
        ra = read_json(run_all)
        stages = ", ".join(
            f"{s['stage']} {s['wall_seconds'] / 60:.1f} min{'' if s['returncode'] == 0 else ' (FAILED)'}"
            for s in ra["stages"]
        )
        lines += [
            f"Produced by `{ra['command']}` started {ra['date']}, {ra['wall_seconds'] / 60:.1f} min in all ({stages}).  ",
            f"Machine: {machine_line(ra)}.",
            "",
        ]
    if not files:
        lines.append("No results yet: run `python -m benchmarks.run_all`.")
    for path in files:
        data = read_json(path)
        images = write_benchmark_outputs(path, plots=plots)[1:]
        lines.append(MARKDOWN[data["benchmark"]](data).replace("### ", "## ", 1))
        lines.append(provenance(data))
        lines.append("")
        for img in images:
            lines.append(f"![{img.stem}]({_rel_to(img, output.parent)})")
            lines.append("")
    output.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return output


def _rel_to(path: Path, base: Path) -> str:
    import os

    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    parser.add_argument("--output", default=str(BENCH_DIR / "RESULTS.md"))
    parser.add_argument("--no-plots", action="store_true")
    opts = parser.parse_args(argv)
    path = write_results_md(Path(opts.results_dir), Path(opts.output), plots=not opts.no_plots)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
