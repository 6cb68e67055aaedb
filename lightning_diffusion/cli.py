"""The ``lightning-diffusion`` command.

``fit | validate | test | predict`` are LightningCLI subcommands over a recipe (``-c recipe.yaml``,
``--print_config``, dotted overrides) with ``--decoding.*`` overrides of the model's decoding settings;
``export`` writes a ``save_pretrained``-style directory from a checkpoint; ``generate`` decodes ad-hoc text.
Checkpoints are always read weights-only unless ``--weights_only false`` is given explicitly. The trainer's progress
bar and model summary default to :class:`StepProgressBar` and :class:`ParameterSummary`. The console script enters
through :mod:`lightning_diffusion.commands`, which answers ``--help`` without importing this module.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from jsonargparse import CLI
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_diffusion.autoregressive.search import Search
from lightning_diffusion.averaging import average
from lightning_diffusion.commands import COMMANDS as COMMANDS  # re-exported: the command table lives there
from lightning_diffusion.commands import usage
from lightning_diffusion.cpu_bf16 import warn_if_emulated
from lightning_diffusion.data import Seq2SeqDataModule
from lightning_diffusion.data.jsonl import DataError
from lightning_diffusion.data.tokenizer import TokenizerError
from lightning_diffusion.decoding import DecodingError, carry_over_sampler
from lightning_diffusion.denormals import flush_denormals_unless_kept
from lightning_diffusion.discrete import samplers as _discrete_samplers  # noqa: F401  short names for --sampler
from lightning_diffusion.distill import distill
from lightning_diffusion.generate import generate
from lightning_diffusion.guidance import Guidance
from lightning_diffusion.parameter_summary import ParameterSummary
from lightning_diffusion.pretrained import (
    METADATA_FILE,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    CheckpointError,
    export_pretrained,
    load_export_weights,
    read_checkpoint,
)
from lightning_diffusion.quiet import quiet_known_noise
from lightning_diffusion.samplers.chain import ChainSampler
from lightning_diffusion.seq2seq import Seq2SeqModule
from lightning_diffusion.step_progress_bar import StepProgressBar

EVALUATION_COMMANDS = ("validate", "test", "predict")
DECODING_FLAGS = ("steps", "sampler", "length_beam", "noise_beam", "search", "collapse_repeats", "guidance", "repeat_penalty")

def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys of a nested config with the ``init_args`` levels left out (``sampler.steps``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            name = prefix if key == "init_args" else f"{prefix}.{key}" if prefix else str(key)
            yield from _flatten(item, name)
    else:
        yield prefix, value


def run_dir_of(ckpt_path: str | Path) -> Path | None:
    """The run directory ``<root>/<name>/version_N`` of a checkpoint written by ``fit`` into
    ``<run dir>/checkpoints/``; None for a file elsewhere. The path is taken as given (``last.ckpt`` may be a link)."""
    path = Path(ckpt_path)
    run = path.parent.parent
    if path.parent.name != "checkpoints" or not run.name.startswith("version_") or not (run / "config.yaml").is_file():
        return None
    return run


def _model_flags(argv: list[str]) -> list[str]:
    """The ``--model.*`` options given on a command line, as dotted keys without ``init_args`` (``sampler.steps``)."""
    flags = []
    for arg in argv:
        if arg.startswith("--model."):
            key = arg[len("--model.") :].split("=", 1)[0]
            flags.append(".".join(part for part in key.split(".") if part != "init_args"))
    return flags


class LightningDiffusionCLI(LightningCLI):
    """``fit | validate | test | predict`` over a recipe; ``-c recipe.yaml``, ``--print_config``, dotted overrides.

    The model and data module are given by ``class_path`` (so a user's subclass works with no registry);
    the tokenizer's vocabulary size flows from the data module to the model. ``--ckpt_path`` takes a Lightning
    checkpoint or, for validate/test/predict, an ``export`` directory (its tokenizer is used unless
    ``--data.tokenizer`` names one).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")
        what = "on top of the model's own decoding settings (a checkpoint's or an export's included)"
        parser.add_argument("--decoding.steps", type=int | None, default=None, help=f"sampling steps (NFE per candidate), {what}")
        parser.add_argument("--decoding.sampler", type=ChainSampler | None, default=None, help=f"sampler class and options, {what}; options left at their defaults keep the model's sampler's values")
        parser.add_argument("--decoding.length_beam", type=int | None, default=None, help=f"lengths tried per source, {what}")
        parser.add_argument("--decoding.noise_beam", type=int | None, default=None, help=f"noise samples per length, {what}")
        parser.add_argument("--decoding.search", type=Search | None, default=None, help=f"autoregressive search (GreedySearch, BeamSearch), {what}")
        parser.add_argument("--decoding.guidance", type=Guidance | None, default=None, help=f"guidance (ClassifierFreeGuidance with --decoding.guidance.scale W, ClassifierGuidance), {what}")
        parser.add_argument("--decoding.collapse_repeats", type=bool | None, default=None, help="collapse runs of the same token into one before detokenizing (post-process, reported with the settings)")
        parser.add_argument("--decoding.repeat_penalty", type=float | Literal["inf"] | None, default=None, help=f"continuous families: round to the best token sequence under this penalty (nats) per back-to-back repeat of a word, 0 = argmax, inf = none among each position's 4 best ids; {what}")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._argv = list(args) if isinstance(args, (list, tuple)) else list(sys.argv[1:]) if args is None else []
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Lightning's re-application of a checkpoint's hyperparameters, but a ``--model.*`` option it would
        silently replace is an error pointing at ``--decoding.*`` (decoding) or the checkpoint (architecture)."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            read_checkpoint(ckpt_path, mmap=True)  # a truncated or foreign file: one CheckpointError line
        before = self.config[subcommand].get("model") if subcommand else None
        before = dict(_flatten(before.as_dict())) if before is not None and hasattr(before, "as_dict") else {}
        super()._parse_ckpt_path()
        flags = _model_flags(getattr(self, "_argv", []))
        if not subcommand or not flags:
            return
        after = self.config[subcommand].get("model")
        after = dict(_flatten(after.as_dict())) if after is not None and hasattr(after, "as_dict") else {}
        changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
        ignored = [f for f in flags if any(key == f or key.startswith(f + ".") for key in changed)]
        if ignored:
            names = ", ".join(f"--model.{flag}" for flag in ignored)
            raise DecodingError(
                f"{names}: replaced by the hyperparameters stored in {self.config[subcommand].get('ckpt_path')} (the "
                "model is rebuilt as it was trained). Change decoding with --decoding.steps, --decoding.sampler, "
                "--decoding.length_beam, --decoding.noise_beam, --decoding.search or --decoding.repeat_penalty instead"
            )

    def _apply_decoding(self) -> None:
        """``--decoding.*`` on top of the model's decoding (after any checkpoint hyperparameters were applied)."""
        given = self.config_init[self.subcommand].get("decoding")
        changes = {name: given.get(name) for name in DECODING_FLAGS if given is not None and given.get(name) is not None}
        if not changes:
            return
        model = self.model
        current = model.decoding
        if "sampler" in changes and current.sampler is not None:
            steps = changes.pop("steps", None)
            sampler, carried, dropped = carry_over_sampler(current.sampler, changes["sampler"])
            changes["sampler"] = sampler
            if steps is not None:
                changes["steps"] = steps
            for label, options in (("keeps", carried), ("drops", dropped)):
                if options:
                    listed = ", ".join(f"{k}={v!r}" for k, v in options.items())
                    print(f"note: --decoding.sampler {label} {listed} of the model's {type(current.sampler).__name__}", file=sys.stderr)
        model.decoding = model.check_decoding(current.replace(**changes))

    def _export_dir(self) -> Path | None:
        if self.subcommand is None:  # run=False: no subcommand, no checkpoint
            return None
        path = self.config[self.subcommand].get("ckpt_path")
        if path is None or not Path(path).is_dir():
            return None
        if self.subcommand not in EVALUATION_COMMANDS:
            raise CheckpointError(
                f"{path}: an export directory holds weights only; `fit` resumes from a .ckpt written by fit"
            )
        if not (Path(path) / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{path}: not an export directory (missing {WEIGHTS_FILE})")
        return Path(path)

    def _run_logger(self) -> TensorBoardLogger | None:
        """A command started from a run's checkpoint (``fit`` resuming, ``validate | test | predict``) logs into that
        run's directory (``version_N``) instead of a new ``version_N+1``: resumed training keeps ``last.ckpt`` where it
        was, and predictions, scores and TensorBoard events land beside the checkpoint. One started from an export
        directory (``--ckpt_path exported/``) logs into ``<export dir>/lightning_logs/version_N`` unless the config
        names a ``trainer.default_root_dir``. Only with the default logger and when the command line names no
        ``--trainer.default_root_dir`` or ``--trainer.logger``; the saved config is not changed."""
        config = self.config[self.subcommand]
        ckpt_path = config.get("ckpt_path")
        told = [arg for arg in getattr(self, "_argv", []) if arg.startswith(("--trainer.default_root_dir", "--trainer.logger"))]
        if not ckpt_path or told or config.trainer.get("logger") not in (None, True):
            return None  # an output directory or logger given on the command line wins
        if Path(ckpt_path).is_dir():
            if config.trainer.get("default_root_dir") is not None:
                return None
            return TensorBoardLogger(save_dir=str(ckpt_path), name="lightning_logs")
        run = run_dir_of(ckpt_path) if Path(ckpt_path).is_file() else None
        if run is None:
            return None
        return TensorBoardLogger(save_dir=str(run.parent.parent), name=run.parent.name, version=run.name)

    def _display_callbacks(self, trainer_config: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """:class:`StepProgressBar` and :class:`ParameterSummary` in place of Lightning's default bar and summary,
        unless the trainer config turns them off or names its own; returns the callbacks to add and the trainer
        arguments that keep Lightning from adding its defaults."""
        given = trainer_config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        if trainer_config.get("barebones"):
            return [], {}
        added: list[Any] = []
        options: dict[str, Any] = {}
        if trainer_config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
            added.append(StepProgressBar())
        if trainer_config.get("enable_model_summary") is not False and not any(isinstance(c, ModelSummary) for c in given):
            added.append(ParameterSummary())
            options["enable_model_summary"] = False  # Lightning's own summary; ParameterSummary runs regardless
        return added, options

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        logger = self._run_logger() if self.subcommand is not None else None
        if logger is not None:
            kwargs.setdefault("logger", logger)
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        added, options = self._display_callbacks(trainer_config)
        if added:
            given = trainer_config.get("callbacks") or []
            kwargs["callbacks"] = [*(given if isinstance(given, list) else [given]), *added]
            kwargs.update(options)
        trainer = super().instantiate_trainer(**kwargs)
        warn_if_emulated(trainer.precision, isinstance(trainer.accelerator, CPUAccelerator))
        return trainer

    def before_instantiate_classes(self) -> None:
        export = self._export_dir()
        data = self.config[self.subcommand].get("data") if export is not None else None
        if export is not None and data is not None and data.init_args.get("tokenizer") is None:
            data.init_args.tokenizer = str(export / TOKENIZER_DIR)

    def _prepare_checkpoint(self) -> None:
        """Read checkpoints weights-only by default; load an export directory's safetensors weights."""
        config = self.config_init[self.subcommand]
        if config.get("weights_only") is None:
            config["weights_only"] = True
        export = self._export_dir()
        if export is None:
            return
        metadata = load_export_weights(self.model, export)
        self.model._check_tokenizer()
        if self.datamodule is not None and hasattr(self.datamodule, "tokenizer_fingerprint"):
            self.datamodule.load_state_dict({"tokenizer_fingerprint": metadata.get("tokenizer_fingerprint")})
        config["ckpt_path"] = None

    def _before_command(self) -> None:
        self._prepare_checkpoint()
        self._apply_decoding()

    before_fit = before_validate = before_test = before_predict = _before_command


def export(ckpt_path: str, output_dir: str, tokenizer: str | None = None) -> None:
    """Write a save_pretrained-style directory (config.yaml, model.safetensors, tokenizer/, export.json).

    Args:
        ckpt_path: checkpoint written by ``lightning-diffusion fit`` (EMA weights when the run used EMA).
        output_dir: directory to write (created; existing files with the same names are replaced).
        tokenizer: tokenizer directory (default: ``<run dir>/tokenizer`` next to ``checkpoints/``).
    """
    out = export_pretrained(ckpt_path, output_dir, tokenizer)
    print(f"exported {ckpt_path} to {out}/ ({WEIGHTS_FILE}, config.yaml, {TOKENIZER_DIR}/, {METADATA_FILE})")
    print(f"  predict: lightning-diffusion predict -c {out}/config.yaml --ckpt_path {out} --data.predict_file <inputs>")
    print(f"           (writes {out}/lightning_logs/version_N/predictions.jsonl; --trainer.default_root_dir DIR to change)")


TOOLS = {"export": export, "generate": generate, "distill": distill, "average": average}


DEBUG_ENV = "LIGHTNING_DIFFUSION_DEBUG"
KNOWN_ERRORS = (CheckpointError, DecodingError, DataError, TokenizerError)


def main(args: list[str] | None = None) -> LightningDiffusionCLI | None:
    """Console entry point; ``main([...])`` (in-process, with ``args``) returns the CLI object.

    From the console script (``args`` None, reads ``sys.argv``) it returns None: the generated script
    calls ``sys.exit(main())``, which would print any other object and exit with status 1.

    A known failure (bad data, tokenizer, checkpoint or decoding setting) ends in one line ``error: ...`` and exit
    status 1; with ``LIGHTNING_DIFFUSION_DEBUG=1`` in the environment it shows the traceback instead. Other
    exceptions always show their traceback.
    """
    try:
        return _main(args)
    except KNOWN_ERRORS as err:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        raise SystemExit(f"error: {err}") from None


def _main(args: list[str] | None) -> LightningDiffusionCLI | None:
    argv = list(sys.argv[1:] if args is None else args)
    quiet_known_noise()
    flush_denormals_unless_kept()  # CPU: denormal floats make the rounding term's backward ~3x slower
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return None
    if argv and argv[0] in TOOLS:
        tool = TOOLS[argv[0]]
        prepare = getattr(tool, "prepare_args", list)  # e.g. generate: bare texts after MODEL
        CLI(tool, args=prepare(argv[1:]), prog=f"lightning-diffusion {argv[0]}")
        return None
    try:
        cli = LightningDiffusionCLI(
            Seq2SeqModule,
            Seq2SeqDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            # fit writes the run's config.yaml; the other commands keep theirs beside it (the run's stays as trained)
            save_config_kwargs={
                "overwrite": True,
                "config_filename": f"{argv[0]}_config.yaml" if argv[0] in EVALUATION_COMMANDS else "config.yaml",
            },
            # The data module shards its own token-budget batches across ranks.
            trainer_defaults={"use_distributed_sampler": False},
            args=args,
        )
    except pickle.UnpicklingError as err:  # Lightning's weights-only torch.load of --ckpt_path
        raise SystemExit(
            "error: refused to load the checkpoint: it holds objects other than tensors and plain containers, and "
            f"checkpoints are loaded weights-only (nothing else is unpickled). Details: {str(err).splitlines()[0]}"
        ) from None
    return cli if args is not None else None


if __name__ == "__main__":
    main()
