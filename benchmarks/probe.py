"""Denoising probe: word accuracy of the denoiser's one-shot x0 from the noised true target, by step t.

Separates learning from sampling: the true target of each pair is noised to step ``t`` exactly as in training
(the model's canvas and padding rule, its ``train_noise_factor``), the denoiser predicts ``x0`` once (two passes,
the second self-conditioned on the first, when the denoiser has self-conditioning), and the prediction is
rounded to tokens by the tied head's argmax and by the nearest word embedding. Reports, per ``t``: token
accuracy over the real target positions (tokens and EOS, no padding), accuracy over the whole canvas (canvas
models: padding included) and the x0 MSE. High accuracy at small ``t`` with BLEU still at noise level points at
sampling; low accuracy there points at training. See :func:`lightning_diffusion.probe.denoising_probe`.

For the discrete family (:class:`~lightning_diffusion.discrete.DiscreteDiffusionLM`) the same idea is the masking
probe (:func:`lightning_diffusion.discrete.probe.masking_probe`): the target is corrupted at continuous times
``--times`` as in training and the one-shot argmax is scored on the corrupted positions and on every real position.

MODEL is a ``.ckpt`` written by ``lightning-diffusion fit`` (its run's ``tokenizer/`` is used) or an export
directory. The data settings (max lengths, keys, evaluation batch budget) are the run's, from the checkpoint or
the export's ``config.yaml``. Writes ``--out`` (JSON) and a markdown table next to it (same name, ``.md``).

    python -m benchmarks.probe runs/.../checkpoints/last.ckpt --data ../shared/data/multi30k_en_de/valid.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import DEFAULT_RESULTS, Progress, envelope, floats, ints, model_record, rel, write_json
from lightning_diffusion.checkpoints import read_checkpoint
from lightning_diffusion.data import Seq2SeqDataModule
from lightning_diffusion.discrete.model import DiscreteDiffusionLM
from lightning_diffusion.discrete.probe import masking_probe
from lightning_diffusion.module import DiffusionLM
from lightning_diffusion.pretrained import CONFIG_FILE, TOKENIZER_DIR, load_pretrained
from lightning_diffusion.probe import ProbeRow, denoising_probe, probe_steps, uses_self_conditioning

DATA_KEYS = (
    "src_key",
    "tgt_key",
    "max_src_len",
    "max_tgt_len",
    "eval_max_tokens",
    "max_tokens",
    "empty_examples",
)
DEFINITIONS = (
    "token accuracy: over real target positions (target tokens and the EOS; padding excluded); "
    "argmax = argmax of the tied head's logits (the samplers' final rounding), nearest = nearest word embedding "
    "(squared L2, the clamping rule). canvas accuracy (models without a length predictor): argmax accuracy over "
    "every canvas position, padding included. MSE: ||x0_hat - z0||^2 averaged over the latent width and the real "
    "target positions. Noise: the training rule z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) F eps with the model's "
    "train_noise_factor F; the same noise draws at every t (one generator per t seeded with --seed)."
)


MASKING_DEFINITIONS = (
    "corrupted positions: real target positions (tokens and EOS) the corruption masked or replaced at time t; "
    "accuracy on corrupted: share of those where the denoiser's argmax is the true token; accuracy on all: share of "
    "every real target position right after carrying the uncorrupted ones over (what a sampler's last step would "
    "keep). Corruption: the model's own process and schedule at t, one generator per t seeded with --seed."
)


def model_files(model: Path, tokenizer: str | None) -> tuple[Path, dict[str, Any]]:
    """The tokenizer directory and the run's data ``init_args`` (empty if unknown) of a checkpoint or export."""
    if model.is_dir():
        config = yaml.safe_load((model / CONFIG_FILE).read_text(encoding="utf-8")) or {}
        data = dict((config.get("data") or {}).get("init_args") or {})
        default_tokenizer = model / TOKENIZER_DIR
    else:
        data = dict(read_checkpoint(model).get("datamodule_hyper_parameters") or {})
        default_tokenizer = model.resolve().parent.parent / TOKENIZER_DIR  # <run dir>/checkpoints/x.ckpt
    return (Path(tokenizer) if tokenizer is not None else default_tokenizer), data


def build_data(
    module: DiffusionLM | DiscreteDiffusionLM, tokenizer_dir: Path, run_data: dict[str, Any], data_file: str, examples: int
) -> Seq2SeqDataModule:
    """A data module reading the first ``examples`` pairs of ``data_file`` as its test split, with the run's
    tokenizer and data settings."""
    args = {key: run_data[key] for key in DATA_KEYS if run_data.get(key) is not None}
    dm = Seq2SeqDataModule(
        test_file=data_file, tokenizer=str(tokenizer_dir), max_eval_examples=examples, **args
    )
    if module.tokenizer_fingerprint is not None and dm.tokenizer_fingerprint != module.tokenizer_fingerprint:
        raise ValueError(
            f"{tokenizer_dir}: not the tokenizer the model was trained with (fingerprints differ)"
        )
    dm.setup("test")
    return dm


def markdown(data: dict[str, Any]) -> str:
    """The results as a markdown section: settings, the table, definitions, command and machine."""
    from benchmarks.report import provenance, table

    m, s = data["model"], data["settings"]
    out = [
        f"### Denoising probe: {m['path']} (step {m['train_step']})",
        "",
        f"{m['class']} with {m['denoiser']} ({m['parameters']:,} parameters), {m['schedule']}, "
        f"train noise factor {m['train_noise_factor']:g}, {'canvas (no length predictor)' if m['canvas'] else 'length predictor'}, "
        f"self-conditioning {'two-pass' if data['self_conditioned'] else 'off'}. Data: {s['data']}, "
        f"{data['examples']} pairs ({data['rows'][0]['tokens']:,} target tokens with EOS), noise seed {s['seed']}.",
        "",
    ]
    rows = [
        [
            r["t"],
            f"{100 * r['token_accuracy_argmax']:.1f}",
            f"{100 * r['token_accuracy_nearest']:.1f}",
            "–" if r["canvas_accuracy"] is None else f"{100 * r['canvas_accuracy']:.1f}",
            f"{r['mse']:.4f}",
        ]
        for r in data["rows"]
    ]
    out.append(
        table(["t", "token acc. argmax (%)", "token acc. nearest (%)", "canvas acc. (%)", "x0 MSE"], rows)
    )
    out += ["", DEFINITIONS, "", provenance(data)]
    return "\n".join(out) + "\n"


def masking_markdown(data: dict[str, Any]) -> str:
    """The discrete family's masking probe as a markdown section."""
    from benchmarks.report import provenance, table

    m, s = data["model"], data["settings"]
    out = [
        f"### Masking probe: {m['path']} (step {m['train_step']})",
        "",
        f"{m['class']} with {m['denoiser']} ({m['parameters']:,} parameters), {m['corruption']}, {m['schedule']}. "
        f"Data: {s['data']}, {data['examples']} pairs, corruption seed {s['seed']}.",
        "",
    ]
    rows = [
        [r["t"], f"{r['corrupted']:,}", f"{100 * r['accuracy_corrupted']:.1f}", f"{100 * r['accuracy_all']:.1f}"]
        for r in data["rows"]
    ]
    out.append(table(["t", "corrupted positions", "accuracy on corrupted (%)", "accuracy on all (%)"], rows))
    out += ["", MASKING_DEFINITIONS, "", provenance(data)]
    return "\n".join(out) + "\n"


def print_table(rows: Sequence[ProbeRow]) -> None:
    print(f"{'t':>6} {'acc argmax':>11} {'acc nearest':>12} {'canvas acc':>11} {'x0 MSE':>10}")
    for r in rows:
        canvas = "-" if r.canvas_accuracy is None else f"{100 * r.canvas_accuracy:.1f}%"
        print(
            f"{r.t:>6} {100 * r.token_accuracy_argmax:>10.1f}% {100 * r.token_accuracy_nearest:>11.1f}% "
            f"{canvas:>11} {r.mse:>10.4f}"
        )


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .ckpt written by lightning-diffusion fit, or an export directory")
    parser.add_argument(
        "--data", required=True, help="JSONL pairs (src/tgt keys as in the run's data settings)"
    )
    parser.add_argument("--examples", type=int, default=500, help="first N pairs of --data")
    parser.add_argument(
        "--steps",
        type=ints,
        default=[1, 100, 500, 1000, 2000],
        help="diffusion steps t (comma-separated; clipped to T)",
    )
    parser.add_argument(
        "--times",
        type=floats,
        default=[0.1, 0.3, 0.5, 0.7, 0.9, 1.0],
        help="discrete family: corruption times t in (0, 1] (comma-separated)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument(
        "--no-self-condition", action="store_true", help="one pass even if the denoiser self-conditions"
    )
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer directory (default: the run's or the export's)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--out", default=str(DEFAULT_RESULTS / "probe.json"), help="JSON output; the .md goes next to it"
    )
    opts = parser.parse_args(argv)
    if opts.examples < 1:
        parser.error("--examples must be >= 1")
    say = Progress("probe")
    started = time.perf_counter()
    model_path = Path(opts.model)
    module = load_pretrained(model_path, opts.tokenizer, opts.device)
    if not isinstance(module, (DiffusionLM, DiscreteDiffusionLM)):
        parser.error(f"{opts.model}: the probe needs a DiffusionLM or DiscreteDiffusionLM, got {type(module).__name__}")
    tokenizer_dir, run_data = model_files(model_path, opts.tokenizer)
    dm = build_data(module, tokenizer_dir, run_data, opts.data, opts.examples)
    batches = list(dm.test_dataloader())
    examples = sum(len(b) for b in batches)
    if isinstance(module, DiscreteDiffusionLM):
        return masking_main(module, model_path, batches, examples, opts, argv, say, started)
    steps = probe_steps(opts.steps, module.schedule.num_steps)
    self_conditioned = uses_self_conditioning(module, not opts.no_self_condition)
    say(
        f"{rel(model_path)} (step {module.checkpoint_step}): {examples} pairs, t = {', '.join(map(str, steps))}"
    )
    rows = denoising_probe(module, batches, steps, opts.seed, self_condition=not opts.no_self_condition)
    print_table(rows)
    settings = {
        "model": rel(model_path),
        "data": rel(opts.data),
        "examples": opts.examples,
        "steps": steps,
        "seed": opts.seed,
        "self_condition": not opts.no_self_condition,
        "device": opts.device,
    }
    data = envelope("probe", argv, "benchmarks.probe", settings)
    data.update(
        model=model_record(
            module,
            model_path,
            schedule=f"{type(module.schedule).__name__}(T={module.schedule.num_steps})",
            train_noise_factor=module.train_noise_factor,
            canvas=module.length_predictor is None,
        ),
        examples=examples,
        self_conditioned=self_conditioned,
        definitions=DEFINITIONS,
        rows=[dataclasses.asdict(r) for r in rows],
        wall_seconds=round(time.perf_counter() - started, 1),
    )
    path = write_json(Path(opts.out), data)
    path.with_suffix(".md").write_text(markdown(data), encoding="utf-8")
    say(f"wrote {rel(path)} and {rel(path.with_suffix('.md'))} ({data['wall_seconds']:.0f} s)")
    return path


def masking_main(
    module: DiscreteDiffusionLM,
    model_path: Path,
    batches: list[Any],
    examples: int,
    opts: argparse.Namespace,
    argv: Sequence[str] | None,
    say: Progress,
    started: float,
) -> Path:
    """The discrete family's probe: :func:`masking_probe` at ``--times``; writes the JSON and markdown."""
    try:
        rows = masking_probe(module, batches, opts.times, opts.seed)
    except ValueError as err:
        raise SystemExit(f"--times: {err}") from None
    say(f"{rel(model_path)} (step {module.checkpoint_step}): {examples} pairs, t = {', '.join(f'{r.t:g}' for r in rows)}")
    print(f"{'t':>6} {'corrupted':>10} {'acc corrupted':>14} {'acc all':>8}")
    for r in rows:
        print(f"{r.t:>6g} {r.corrupted:>10} {100 * r.accuracy_corrupted:>13.1f}% {100 * r.accuracy_all:>7.1f}%")
    settings = {
        "model": rel(model_path),
        "data": rel(opts.data),
        "examples": opts.examples,
        "times": [r.t for r in rows],
        "seed": opts.seed,
        "device": opts.device,
    }
    data = envelope("probe", argv, "benchmarks.probe", settings)
    data.update(
        model=model_record(
            module, model_path, corruption=type(module.corruption).__name__, schedule=type(module.schedule).__name__
        ),
        examples=examples,
        definitions=MASKING_DEFINITIONS,
        rows=[dataclasses.asdict(r) for r in rows],
        wall_seconds=round(time.perf_counter() - started, 1),
    )
    path = write_json(Path(opts.out), data)
    path.with_suffix(".md").write_text(masking_markdown(data), encoding="utf-8")
    say(f"wrote {rel(path)} and {rel(path.with_suffix('.md'))} ({data['wall_seconds']:.0f} s)")
    return path


if __name__ == "__main__":
    main()
