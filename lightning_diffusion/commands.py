"""The ``lightning-diffusion`` console script: the list of commands and a dispatcher that imports the heavy CLI
(torch, Lightning) only once a command is chosen, so ``lightning-diffusion --help`` answers at once."""

from __future__ import annotations

import difflib
import sys
from typing import Any

COMMANDS = {
    "fit": "train a model from a recipe (-c recipes/<family>/<dataset>.yaml); resume with --ckpt_path",
    "validate": "decode and score the validation split with a checkpoint or an export (BLEU, ROUGE, settings)",
    "test": "decode and score the test split with a checkpoint or an export (BLEU, ROUGE, settings)",
    "predict": "decode an input file (data.predict_file) to <run dir>/predictions.jsonl, in input order",
    "export": "write a checkpoint as a directory: config.yaml, model.safetensors, tokenizer/, export.json",
    "generate": "translate or summarize text given as arguments or on stdin, one hypothesis per line",
    "distill": "decode a training file with a teacher into distilled {src, tgt} JSONL (resumable, with provenance)",
    "average": "average the weights of checkpoints (CKPT ... or --last K --dir DIR) into one, for evaluation/export",
}
HELP_FLAGS = ("-h", "--help")


def usage() -> str:
    """The top-level help: every command with one line, and where to read more."""
    width = max(map(len, COMMANDS))
    lines = [
        "usage: lightning-diffusion COMMAND [options]",
        "",
        "Sequence-to-sequence diffusion models (continuous: DiffuSeq, SeqDiffuSeq, Difformer-style; discrete:",
        "absorbing / multinomial / mask-and-replace) and an autoregressive baseline, trained and evaluated from recipe YAMLs.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()),
        "",
        "Each command has its own help: lightning-diffusion COMMAND --help",
        "Decoding settings of validate/test/predict/fit: --decoding.steps, --decoding.sampler, --decoding.length_beam,",
        "--decoding.noise_beam (diffusion), --decoding.search (autoregressive); they apply on top of a checkpoint's.",
    ]
    return "\n".join(lines)


def unknown_command(name: str) -> str:
    """The one-line error for a command that does not exist, with the closest one when there is one."""
    close = difflib.get_close_matches(name, COMMANDS, n=1)
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    return f"error: unknown command {name!r}{hint}; the commands are {', '.join(COMMANDS)} (lightning-diffusion --help)"


def main(args: list[str] | None = None) -> Any:
    """Console entry point: the top-level help without importing anything heavy, else
    :func:`lightning_diffusion.cli.main` (which see for the return value and exit status)."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in HELP_FLAGS:
        print(usage())
        return None
    if not argv[0].startswith("-") and argv[0] not in COMMANDS:
        raise SystemExit(unknown_command(argv[0]))
    from lightning_diffusion.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    main()
