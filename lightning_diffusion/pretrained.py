"""Safe loading and export of trained models.

- :func:`read_checkpoint`: a Lightning ``.ckpt`` read with ``weights_only=True`` (tensors and plain containers
  only: a crafted file cannot run code), with a clear error otherwise.
- :func:`export_pretrained`: a ``save_pretrained``-style directory: ``config.yaml`` (the model's
  ``class_path``/``init_args``), ``model.safetensors`` (weights and buffers, e.g. the adaptive schedule table),
  ``tokenizer/`` and ``export.json`` (tokenizer fingerprint, training step, library version).
- :func:`load_pretrained`: a ready-to-decode module (eval mode, tokenizer attached and checked) from either.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentParser
from safetensors.torch import load_model, save_model

from lightning_diffusion.checkpoints import CHECKPOINT_KEY, CheckpointError, read_checkpoint
from lightning_diffusion.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from lightning_diffusion.seq2seq import Seq2SeqModule

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
METADATA_FILE = "export.json"
FORMAT_VERSION = 1


def model_config(checkpoint: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of the module from a checkpoint written by the CLI (``hyper_parameters``)."""
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    class_path = hparams.pop("_class_path", None)
    hparams.pop("_instantiator", None)
    if class_path is None:
        raise CheckpointError(
            f"{source}: the checkpoint has no '_class_path' in its hyper_parameters (it was not written by "
            "`lightning-diffusion fit`); load it with YourModule.load_from_checkpoint(path, <parts>) instead"
        )
    return {"class_path": class_path, "init_args": hparams}


def build_module(config: dict[str, Any], source: str | Path) -> Seq2SeqModule:
    """Instantiate the module (and every nested ``class_path`` part) from ``{"class_path", "init_args"}``."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Seq2SeqModule, "model", required=True)
    try:
        namespace = parser.parse_object({"model": config})
        return parser.instantiate_classes(namespace).model
    except Exception as err:  # jsonargparse reports the offending key
        raise CheckpointError(f"{source}: cannot build the model from its config: {err}") from err


def _check_match(source: str | Path, missing: list[str], unexpected: list[str]) -> None:
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match the model built from its config (missing: {missing[:5]}, "
            f"unexpected: {unexpected[:5]})"
        )


def load_export_weights(module: Seq2SeqModule, export_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``export_dir/model.safetensors`` into ``module`` (every weight must match; tied weights are stored
    once), record the export's training step and tokenizer fingerprint on the module, and return ``export.json``."""
    weights_file = export_dir / WEIGHTS_FILE
    metadata = json.loads((export_dir / METADATA_FILE).read_text(encoding="utf-8"))
    try:
        missing, unexpected = load_model(module, str(weights_file), strict=False, device=str(map_location))
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{weights_file}: not a readable safetensors file ({err})") from err
    _check_match(export_dir, list(missing), list(unexpected))
    module.checkpoint_step = metadata.get("global_step")
    module.checkpoint_tokenizer_fingerprint = metadata.get("tokenizer_fingerprint")
    return metadata


def _run_tokenizer_dir(checkpoint_path: Path) -> Path:
    """``<run dir>/tokenizer`` for ``<run dir>/checkpoints/<name>.ckpt`` (where ``fit`` saves it)."""
    return checkpoint_path.resolve().parent.parent / TOKENIZER_DIR


def _attach(module: Seq2SeqModule, tokenizer_dir: Path, expected: str | None, source: str | Path) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    fingerprint = tokenizer_fingerprint(tokenizer)
    if expected is not None and fingerprint != expected:
        raise CheckpointError(
            f"{source}: the model was trained with tokenizer fingerprint {expected[:12]}..., but {tokenizer_dir} has "
            f"{fingerprint[:12]}...: use the tokenizer saved with the run (<run dir>/tokenizer)"
        )
    module.attach_tokenizer(tokenizer, fingerprint)


def load_pretrained(
    path: str | Path, tokenizer: str | Path | None = None, map_location: str | torch.device = "cpu"
) -> Seq2SeqModule:
    """A trained module in eval mode with its tokenizer attached, from an export directory or a ``.ckpt``.

    Args:
        path: an :func:`export_pretrained` directory, or a checkpoint written by ``lightning-diffusion fit``
            (its weights are the EMA average when the run used EMA).
        tokenizer: tokenizer directory; default the export's ``tokenizer/`` or the run's ``<run dir>/tokenizer``.
        map_location: device of the weights.
    """
    source = Path(path)
    if source.is_dir():
        config_file, weights_file = source / CONFIG_FILE, source / WEIGHTS_FILE
        for required in (config_file, weights_file, source / METADATA_FILE):
            if not required.is_file():
                raise CheckpointError(f"{source}: not an export directory (missing {required.name})")
        config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        module = build_module(config["model"], config_file)
        expected = load_export_weights(module, source, map_location).get("tokenizer_fingerprint")
        tokenizer_dir = Path(tokenizer) if tokenizer is not None else source / TOKENIZER_DIR
    else:
        checkpoint = read_checkpoint(source, map_location)
        module = build_module(model_config(checkpoint, source), source)
        missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
        _check_match(source, missing, unexpected)
        expected = checkpoint.get(CHECKPOINT_KEY, {}).get("tokenizer_fingerprint")
        module.checkpoint_step = checkpoint.get("global_step")
        tokenizer_dir = Path(tokenizer) if tokenizer is not None else _run_tokenizer_dir(source)
    _attach(module, tokenizer_dir, expected, source)
    return module.to(map_location).eval()


def export_pretrained(checkpoint_path: str | Path, output_dir: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Write ``output_dir`` (config.yaml, model.safetensors, tokenizer/, export.json) from a ``fit`` checkpoint.

    The weights are the checkpoint's ``state_dict`` (the EMA average when the run used EMA), with every buffer
    (schedule tables, statistics); optimizer and loop state are left out.
    """
    source = Path(checkpoint_path)
    module = load_pretrained(source, tokenizer)  # builds, loads and checks the tokenizer: fail before writing
    checkpoint = read_checkpoint(source)
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_export(module, checkpoint, source, out, staging)
        out.mkdir(exist_ok=True)
        for item in staging.iterdir():  # only after everything was written: no half-written export
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _write_export(module: Seq2SeqModule, checkpoint: dict[str, Any], source: Path, out: Path, staging: Path) -> None:
    config: dict[str, Any] = {"model": model_config(checkpoint, source)}
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    data_class = data.pop("_class_path", None)
    if data_class is not None:  # the run's data settings (lengths, budgets), without its files and caches
        data.pop("_instantiator", None)
        for key in ("train_file", "val_file", "test_file", "predict_file", "tokenizer", "tokenizer_cache_dir"):
            data.pop(key, None)
        config["data"] = {"class_path": data_class, "init_args": data}
        config["trainer"] = {"callbacks": [{"class_path": "lightning_diffusion.callbacks.PredictionWriter"}]}
    header = (
        f"# Exported by lightning-diffusion from {source.name} (step {checkpoint.get('global_step')}).\n"
        f"# Predict: lightning-diffusion predict -c {out}/{CONFIG_FILE} --ckpt_path {out} --data.predict_file <inputs>\n"
        f"# Python:  lightning_diffusion.pretrained.load_pretrained('{out}')\n"
    )
    (staging / CONFIG_FILE).write_text(header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    # save_model stores tied weights (e.g. an output layer sharing the embedding) once.
    save_model(module.cpu(), str(staging / WEIGHTS_FILE), metadata={"format": "lightning-diffusion", "version": str(FORMAT_VERSION)})
    module.tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
    from lightning_diffusion import __version__

    metadata = {
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "class_path": config["model"]["class_path"],
        "tokenizer_fingerprint": module.tokenizer_fingerprint,
        "global_step": checkpoint.get("global_step"),
        "source_checkpoint": str(source.resolve()),
        "parameters": sum(p.numel() for p in module.parameters()),
    }
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


__all__ = ["CheckpointError", "export_pretrained", "load_pretrained", "load_export_weights", "read_checkpoint"]
