"""Few-step solvers and guidance: BLEU against NFE per sampler, and BLEU against the guidance scale, for one model.

Decodes the first ``--examples`` pairs of ``--data`` with one trained diffusion model (a ``.ckpt`` written by
``lightning-diffusion fit``, with its run's ``tokenizer/``, or an export directory), changing one setting at a time
from the model's own decoding (length beam, noise beam, selection and the sampler's other options are kept):

- every sampler of ``--samplers`` at every step count of ``--steps`` (``carry_over_sampler`` keeps the model
  sampler's options, e.g. ``noise_factor`` and clamping, that the other class also has);
- classifier-free guidance at every scale of ``--guidance`` (with the model's own sampler at ``--guidance-steps``
  steps), for a model trained with ``condition_dropout > 0``; skipped with a note otherwise.

Every row reports BLEU (sacreBLEU, with its signature), NFE per candidate as the model counts it (guidance counts
both branches), the candidates per source, decoding speed and the output-health counts. Writes ``--out`` (JSON) and
a markdown section next to it (same name, ``.md``). Choose settings on a validation file; report on the test file.

    python -m benchmarks.solvers runs/.../checkpoints/last.ckpt --data ../shared/data/multi30k_en_de/valid.jsonl
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DEFAULT_RESULTS,
    Progress,
    decode_batches,
    envelope,
    floats,
    import_object,
    ints,
    model_record,
    names,
    rel,
    score,
    write_json,
)
from benchmarks.probe import build_data, model_files
from lightning_diffusion.decoding import Decoding, carry_over_sampler
from lightning_diffusion.pretrained import load_pretrained

SAMPLER_MODULES = ("lightning_diffusion.samplers", "lightning_diffusion.discrete.samplers")


def sampler_class(name: str) -> type:
    """A sampler class by short name (``DDIMSampler``) or dotted class path."""
    if "." in name:
        return import_object(name)
    for module_name in SAMPLER_MODULES:
        found = getattr(importlib.import_module(module_name), name, None)
        if found is not None:
            return found
    raise SystemExit(f"--samplers: unknown sampler {name!r} (a class of {' or '.join(SAMPLER_MODULES)}, or a class path)")


def solver_decoding(module: Any, cls: type, steps: int) -> Decoding:
    """The model's decoding with its sampler replaced by ``cls(steps=steps)`` (the old sampler's options carried over)."""
    chosen, _, _ = carry_over_sampler(module.decoding.sampler, cls(steps=steps))
    return module.check_decoding(module.decoding.replace(sampler=chosen))


def guidance_decoding(module: Any, scale: float, steps: int) -> Decoding:
    """The model's decoding at ``steps`` steps with classifier-free guidance of scale ``scale``."""
    from lightning_diffusion.guidance import ClassifierFreeGuidance

    return module.check_decoding(module.decoding.replace(steps=steps, guidance=ClassifierFreeGuidance(scale)))


def measure(module: Any, batches: list[Any], decoding: Decoding, seed: int) -> dict[str, Any]:
    """Decode ``batches`` with ``decoding`` and score them."""
    decoded = decode_batches(module, batches, seed, decoding)
    summary = decoded.summary()
    return {
        "settings": module.decoding_settings(decoding),
        "nfe": summary["nfe_mean"],
        "candidates": summary["candidates"],
        "sentences_per_second": summary["sentences_per_second"],
        "decode_seconds": summary["decode_seconds"],
        **score(decoded.rows),
    }


def markdown(data: dict[str, Any]) -> str:
    """The results as a markdown section: the two tables, the settings, command and machine."""
    from benchmarks.report import provenance, table

    s, m = data["settings"], data["model"]
    lines = [
        f"### Solvers and guidance: {m['class']} ({m['denoiser']}, step {m['train_step']})",
        "",
        f"Model `{m['path']}`, {m['parameters']:,} parameters; {data['examples']} pairs of `{s['data']}`; "
        f"decoding seed {s['seed']}; model decoding otherwise: {data['model_decoding']}.",
        "",
        "BLEU against NFE (sampler x steps; NFE per candidate):",
        "",
    ]
    rows = [
        [r["sampler"], r["steps"], r["nfe"], r["bleu"], r["repeated_word_hypotheses"], r["empty_hypotheses"],
         r["replacement_char_hypotheses"], r["sentences_per_second"]]
        for r in data["solver_rows"]
    ]  # fmt: skip
    lines.append(
        table(["sampler", "steps", "NFE", "BLEU", "repeated-word hyps", "empty", "U+FFFD", "sentences/s"], rows)
    )
    if data["guidance_rows"]:
        lines += ["", f"BLEU against the classifier-free guidance scale w ({s['guidance_steps']} steps):", ""]
        rows = [
            [r["scale"], r["nfe"], r["bleu"], r["repeated_word_hypotheses"], r["empty_hypotheses"],
             r["replacement_char_hypotheses"], r["sentences_per_second"]]
            for r in data["guidance_rows"]
        ]  # fmt: skip
        lines.append(table(["w", "NFE", "BLEU", "repeated-word hyps", "empty", "U+FFFD", "sentences/s"], rows))
    elif data.get("guidance_note"):
        lines += ["", f"Guidance: {data['guidance_note']}"]
    signature = next((r["bleu_signature"] for r in data["solver_rows"] + data["guidance_rows"]), "")
    lines += ["", f"sacreBLEU signature: `{signature}`  ", provenance(data), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.solvers", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .ckpt written by lightning-diffusion fit, or an export directory")
    parser.add_argument("--data", required=True, help="JSONL pairs (a validation file to choose, a test file to report)")
    parser.add_argument("--examples", type=int, default=1000, help="first N pairs of --data")
    parser.add_argument("--samplers", type=names, default=["DDIMSampler", "AncestralSampler", "DPMSolverPP"])
    parser.add_argument("--steps", type=ints, default=[2, 5, 10, 20], help="sampling steps (comma-separated)")
    parser.add_argument("--guidance", type=floats, default=[1.0, 1.5, 2.0, 3.0], help="CFG scales; empty to skip")
    parser.add_argument("--guidance-steps", type=int, default=None, help="steps for the guidance sweep (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="decoding noise seed (per batch: seed + first index)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the run's or the export's)")
    parser.add_argument("--out", default=str(DEFAULT_RESULTS / "solvers.json"), help="JSON output; .md next to it")
    opts = parser.parse_args(argv)
    if opts.examples < 1:
        parser.error("--examples must be >= 1")
    say = Progress("solvers")
    started = time.perf_counter()
    model_path = Path(opts.model)
    module = load_pretrained(model_path, opts.tokenizer, "cpu")
    if module.decoding.sampler is None:
        parser.error(f"{opts.model}: {type(module).__name__} has no sampler (a diffusion model is needed)")
    tokenizer_dir, run_data = model_files(model_path, opts.tokenizer)
    dm = build_data(module, tokenizer_dir, run_data, opts.data, opts.examples)
    batches = list(dm.test_dataloader())
    examples = sum(len(b) for b in batches)
    say(f"{rel(model_path)} (step {module.checkpoint_step}): {examples} pairs of {rel(opts.data)}")
    solver_rows = []
    for name in opts.samplers:
        cls = sampler_class(name)
        for steps in opts.steps:
            row = {"sampler": cls.__name__, "steps": steps, **measure(module, batches, solver_decoding(module, cls, steps), opts.seed)}
            say(f"{cls.__name__} {steps} steps: BLEU {row['bleu']:.2f} (NFE {row['nfe']}, {row['sentences_per_second']} sentences/s)")
            solver_rows.append(row)
    guidance_rows: list[dict[str, Any]] = []
    guidance_steps = opts.guidance_steps or module.decoding.sampler.steps
    note = None
    if opts.guidance and getattr(module, "condition_dropout", 0.0) <= 0:
        note = f"skipped: the model was trained with condition_dropout {getattr(module, 'condition_dropout', 0.0)} (no null condition)"
        say(note)
    else:
        for scale in opts.guidance:
            row = {"scale": scale, **measure(module, batches, guidance_decoding(module, scale, guidance_steps), opts.seed)}
            say(f"guidance w={scale}: BLEU {row['bleu']:.2f} (NFE {row['nfe']})")
            guidance_rows.append(row)
    settings = {
        "model": rel(model_path),
        "data": rel(opts.data),
        "examples": opts.examples,
        "samplers": opts.samplers,
        "steps": opts.steps,
        "guidance": opts.guidance,
        "guidance_steps": guidance_steps,
        "seed": opts.seed,
    }
    data = envelope("solvers", argv, "benchmarks.solvers", settings)
    data.update(
        model=model_record(module, model_path, condition_dropout=getattr(module, "condition_dropout", 0.0)),
        model_decoding=module.decoding_settings(),
        examples=examples,
        solver_rows=solver_rows,
        guidance_rows=guidance_rows,
        guidance_note=note,
        wall_seconds=round(time.perf_counter() - started, 1),
    )
    path = write_json(Path(opts.out), data)
    md = path.with_suffix(".md")
    md.write_text(markdown(data), encoding="utf-8")
    say(f"wrote {rel(path)} and {rel(md)}")
    return path


if __name__ == "__main__":
    main()
