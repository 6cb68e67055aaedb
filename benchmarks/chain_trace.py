"""Chain trace: per sampler step, the share of chains whose rounded x0 estimate repeats a word back to back and the
share of tokens that still differ from the chain's output.

Where the probe (``benchmarks.probe``) asks whether the denoiser learnt, this asks whether the sampling chain uses
it: a chain whose first estimate, made from pure noise, already holds nearly all of its output decodes in one shot
(more steps cannot help, and what it repeats at step 1 it keeps). Decoding is the model's own (``--decoding`` JSON
overrides, as in a benchmark systems file: ``'{"steps": 50}'``, ``'{"length_beam": 1}'``); every candidate chain
counts. See :func:`lightning_diffusion.chain_trace.chain_trace`.

MODEL is a ``.ckpt`` written by ``lightning-diffusion fit`` (its run's ``tokenizer/`` is used) or an export
directory; data settings as in ``benchmarks.probe``. Writes ``--out`` (JSON) and a markdown table next to it.

    python -m benchmarks.chain_trace runs/.../checkpoints/last.ckpt --data ../shared/data/multi30k_en_de/valid.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_RESULTS, Progress, decoding_for, envelope, model_record, rel, write_json
from benchmarks.probe import build_data, model_files
from lightning_diffusion.chain_trace import as_dicts, chain_trace
from lightning_diffusion.module import DiffusionLM
from lightning_diffusion.pretrained import load_pretrained

DEFINITIONS = (
    "Each denoiser call's estimate x0_hat is rounded by the tied head's argmax. repeated: share of candidate chains "
    "whose rounded estimate has a token equal to its left neighbour at counted positions. Counted positions: the "
    "hypothesis's, i.e. before the last estimate's first end token (where decoding cuts it), not padding, within "
    "the predicted length. changed: share of the counted positions whose token differs from the chain's last estimate (its output unless the sampler clamps). Every "
    "candidate chain counts."
)


def markdown(data: dict[str, Any]) -> str:
    from benchmarks.report import provenance, table

    m, s = data["model"], data["settings"]
    out = [
        f"### Chain trace: {m['path']} (step {m['train_step']})",
        "",
        f"{m['class']} with {m['denoiser']} ({m['parameters']:,} parameters), train noise factor "
        f"{m['train_noise_factor']:g}. Decoding: {data['decoding']}. Data: {s['data']}, {data['examples']} sources, "
        f"noise seed {s['seed']}.",
        "",
    ]
    rows = [
        [r["step"], r["t"], f"{100 * r['repeated_share']:.0f}", f"{100 * r['changed_share']:.1f}"] for r in data["rows"]
    ]
    out.append(table(["step", "t", "chains repeating a word (%)", "tokens differing from the output (%)"], rows))
    out += ["", DEFINITIONS, "", provenance(data)]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chain_trace", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .ckpt written by lightning-diffusion fit, or an export directory")
    parser.add_argument("--data", required=True, help="JSONL pairs (src/tgt keys as in the run's data settings)")
    parser.add_argument("--examples", type=int, default=300, help="first N sources of --data")
    parser.add_argument("--decoding", default="{}", help="JSON overrides of the model's decoding")
    parser.add_argument("--seed", type=int, default=0, help="seed of the decoding noise")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the run's or the export's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(DEFAULT_RESULTS / "chain_trace.json"), help="JSON output; .md next to it")
    opts = parser.parse_args(argv)
    if opts.examples < 1:
        parser.error("--examples must be >= 1")
    try:
        overrides = json.loads(opts.decoding)
    except json.JSONDecodeError as err:
        parser.error(f"--decoding: not JSON ({err})")
    say = Progress("chain_trace")
    started = time.perf_counter()
    model_path = Path(opts.model)
    module = load_pretrained(model_path, opts.tokenizer, opts.device)
    if not isinstance(module, DiffusionLM):
        parser.error(f"{opts.model}: the chain trace needs a DiffusionLM (a continuous chain), got {type(module).__name__}")
    try:
        decoding = decoding_for(module, overrides)
    except ValueError as err:
        parser.error(f"--decoding: {err}")
    tokenizer_dir, run_data = model_files(model_path, opts.tokenizer)
    batches = list(build_data(module, tokenizer_dir, run_data, opts.data, opts.examples).test_dataloader())
    examples = sum(len(b) for b in batches)
    say(f"{rel(model_path)} (step {module.checkpoint_step}): {examples} sources, {decoding.describe()}")
    rows = chain_trace(module, batches, decoding, opts.seed)
    print(f"{'step':>4} {'t':>6} {'repeating':>10} {'differing':>10}")
    for r in rows:
        print(f"{r.step:>4} {r.t:>6} {100 * r.repeated_share:>9.0f}% {100 * r.changed_share:>9.1f}%")
    settings = {"model": rel(model_path), "data": rel(opts.data), "examples": opts.examples, "decoding": overrides,
                "seed": opts.seed, "device": opts.device}  # fmt: skip
    data = envelope("chain_trace", argv, "benchmarks.chain_trace", settings)
    data.update(
        model=model_record(module, model_path, train_noise_factor=module.train_noise_factor),
        decoding=decoding.describe(),
        examples=examples,
        definitions=DEFINITIONS,
        rows=as_dicts(rows),
        wall_seconds=round(time.perf_counter() - started, 1),
    )
    path = write_json(Path(opts.out), data)
    path.with_suffix(".md").write_text(markdown(data), encoding="utf-8")
    say(f"wrote {rel(path)} and {rel(path.with_suffix('.md'))} ({data['wall_seconds']:.0f} s)")
    return path


if __name__ == "__main__":
    main()
