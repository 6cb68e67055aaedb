"""The ``lightning-diffusion`` command.

``fit | validate | test | predict`` are LightningCLI subcommands over a recipe (``-c recipe.yaml``,
``--print_config``, dotted overrides); ``export`` writes a ``save_pretrained``-style directory from a checkpoint.
Checkpoints are always read weights-only unless ``--weights_only false`` is given explicitly.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from jsonargparse import CLI
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_diffusion.data import Seq2SeqDataModule
from lightning_diffusion.generate import generate
from lightning_diffusion.pretrained import (
    METADATA_FILE,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    CheckpointError,
    export_pretrained,
    load_export_weights,
)
from lightning_diffusion.seq2seq import Seq2SeqModule

EVALUATION_COMMANDS = ("validate", "test", "predict")


class LightningDiffusionCLI(LightningCLI):
    """``fit | validate | test | predict`` over a recipe; ``-c recipe.yaml``, ``--print_config``, dotted overrides.

    The model and data module are given by ``class_path`` (so a user's subclass works with no registry);
    the tokenizer's vocabulary size flows from the data module to the model. ``--ckpt_path`` takes a Lightning
    checkpoint or, for validate/test/predict, an ``export`` directory (its tokenizer is used unless
    ``--data.tokenizer`` names one).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")

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

    before_fit = before_validate = before_test = before_predict = _prepare_checkpoint


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


TOOLS = {"export": export, "generate": generate}


def main(args: list[str] | None = None) -> LightningDiffusionCLI | None:
    """Console entry point; ``main([...])`` (in-process, with ``args``) returns the CLI object.

    From the console script (``args`` None, reads ``sys.argv``) it returns None: the generated script
    calls ``sys.exit(main())``, which would print any other object and exit with status 1.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in TOOLS:
        try:
            tool = TOOLS[argv[0]]
            prepare = getattr(tool, "prepare_args", list)  # e.g. generate: bare texts after MODEL
            CLI(tool, args=prepare(argv[1:]), prog=f"lightning-diffusion {argv[0]}")
        except CheckpointError as err:
            raise SystemExit(f"error: {err}") from None
        return None
    try:
        cli = LightningDiffusionCLI(
            Seq2SeqModule,
            Seq2SeqDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            # The data module shards its own token-budget batches across ranks.
            trainer_defaults={"use_distributed_sampler": False},
            args=args,
        )
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from None
    except pickle.UnpicklingError as err:  # Lightning's weights-only torch.load of --ckpt_path
        raise SystemExit(
            "error: refused to load the checkpoint: it holds objects other than tensors and plain containers, and "
            f"checkpoints are loaded weights-only (nothing else is unpickled). Details: {str(err).splitlines()[0]}"
        ) from None
    return cli if args is not None else None


if __name__ == "__main__":
    main()
