"""The ``lightning-diffusion`` command: LightningCLI with the library's defaults and links."""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_diffusion.data import Seq2SeqDataModule
from lightning_diffusion.seq2seq import Seq2SeqModule


class LightningDiffusionCLI(LightningCLI):
    """``fit | validate | test | predict`` over a recipe; ``-c recipe.yaml``, ``--print_config``, dotted overrides.

    The model and data module are given by ``class_path`` (so a user's subclass works with no registry);
    the tokenizer's vocabulary size flows from the data module to the model.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")


def main(args: list[str] | None = None) -> LightningDiffusionCLI | None:
    """Console entry point; ``main([...])`` (in-process, with ``args``) returns the CLI object.

    From the console script (``args`` None, reads ``sys.argv``) it returns None: the generated script
    calls ``sys.exit(main())``, which would print any other object and exit with status 1.
    """
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
    return cli if args is not None else None


if __name__ == "__main__":
    main()
