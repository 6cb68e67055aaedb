"""Checkpoint averaging: the element-wise mean of the weights of the last few checkpoints of a run, for evaluation
and export (Difformer and fairseq's Transformer average the last 5).

- :func:`average_checkpoints`: ``paths`` -> one checkpoint at ``output`` whose ``state_dict`` is the mean.
- :func:`latest_checkpoints`: the ``k`` newest checkpoints of a directory by training step.
- :func:`average`: the ``lightning-diffusion average`` command.

The result is a weights-only checkpoint: it validates, tests, predicts and exports like any checkpoint of the
run, but it has no optimizer, LR-scheduler or callback state, so ``fit --ckpt_path`` cannot resume from it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_diffusion.checkpoints import CHECKPOINT_KEY, CheckpointError, read_checkpoint

# Checkpoint entries that are training state, not part of the averaged model: dropped from the output.
TRAINING_STATE_KEYS = ("optimizer_states", "lr_schedulers", "callbacks", "current_model_state", "averaging_state")


def _step(checkpoint: dict[str, Any]) -> int:
    step = checkpoint.get("global_step")
    return int(step) if isinstance(step, int) else -1


def _fingerprint(checkpoint: dict[str, Any]) -> str | None:
    return (checkpoint.get(CHECKPOINT_KEY) or {}).get("tokenizer_fingerprint")


def _storage_key(tensor: Tensor) -> tuple[Any, ...]:
    """Identity of a tensor's memory (tied weights share it)."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())


def _check_same(reference: dict[str, Any], state: dict[str, Any], first: Path, path: Path) -> None:
    """``state`` has ``reference``'s keys, and tensors of the same shapes and kinds (float or not)."""
    missing, extra = sorted(reference.keys() - state.keys()), sorted(state.keys() - reference.keys())
    if missing or extra:
        key = (missing or extra)[0]
        where = f"in {first} but not in {path}" if missing else f"in {path} but not in {first}"
        raise CheckpointError(
            f"cannot average {first} and {path}: state_dict key {key!r} is {where} "
            f"({len(missing)} missing, {len(extra)} extra: checkpoints of different models?)"
        )
    for key, value in reference.items():
        other = state[key]
        if isinstance(value, Tensor) != isinstance(other, Tensor):
            raise CheckpointError(f"cannot average {first} and {path}: state_dict key {key!r} is a tensor in only one")
        if not isinstance(value, Tensor):
            continue
        if value.shape != other.shape:
            raise CheckpointError(
                f"cannot average {first} and {path}: state_dict key {key!r} has shape {tuple(value.shape)} in "
                f"{first} but {tuple(other.shape)} in {path}"
            )
        if value.is_floating_point() != other.is_floating_point():
            raise CheckpointError(
                f"cannot average {first} and {path}: state_dict key {key!r} is {value.dtype} in {first} but "
                f"{other.dtype} in {path}"
            )


def average_checkpoints(paths: Sequence[str | Path], output: str | Path) -> Path:
    """Write to ``output`` a checkpoint whose ``state_dict`` is the element-wise mean of the checkpoints' ones.

    ``mean[key] = (state_1[key] + ... + state_K[key]) / K`` for every floating-point tensor (summed in at least
    float32, stored in the newest checkpoint's dtype). Integer and boolean tensors (counters, step tables) and
    non-tensor entries are taken from the newest checkpoint (highest ``global_step``; the last given on a tie),
    as are the hyperparameters, the data module's state and the library's metadata (tokenizer fingerprint). Keys
    sharing memory in the newest checkpoint (tied embeddings) share it in the output. The checkpoints are read
    weights-only, one at a time; a checkpoint written with EMA contributes its EMA weights (its ``state_dict``).

    The optimizer, LR-scheduler and callback states (and EMA's raw weights) are dropped: the output is for
    ``validate``/``test``/``predict``/``export``, not for resuming training. It records the averaged files and
    steps under ``checkpoint["lightning_diffusion"]["averaged_from"]``.

    Raises:
        CheckpointError: no paths, a path given twice, an unreadable checkpoint, or checkpoints whose keys, shapes
            or tokenizers differ (the message names the key and both files).
    """
    files = [Path(p) for p in paths]
    if not files:
        raise CheckpointError("no checkpoints to average")
    seen: dict[Path, Path] = {}
    for file in files:
        resolved = file.resolve()
        if resolved in seen:
            raise CheckpointError(f"{file} is given twice (as {seen[resolved]} too): each checkpoint would count twice")
        seen[resolved] = file
    out = Path(output)

    sums: dict[str, Tensor] = {}
    reference: dict[str, Any] = {}
    newest: dict[str, Any] = {}
    first_file = files[0]
    fingerprint: str | None = None
    sources: list[dict[str, Any]] = []
    for index, file in enumerate(files):
        checkpoint = read_checkpoint(file)
        state = checkpoint["state_dict"]
        if index == 0:
            reference = {k: (v.detach().to("meta") if isinstance(v, Tensor) else v) for k, v in state.items()}
            fingerprint = _fingerprint(checkpoint)
        else:
            _check_same(reference, state, first_file, file)
            if _fingerprint(checkpoint) != fingerprint:
                raise CheckpointError(
                    f"cannot average {first_file} and {file}: they were trained with different tokenizers "
                    f"(fingerprints {str(fingerprint)[:12]}... and {str(_fingerprint(checkpoint))[:12]}...)"
                )
        for key, value in state.items():
            if isinstance(value, Tensor) and value.is_floating_point():
                accumulate = value.detach().to(torch.promote_types(value.dtype, torch.float32))
                sums[key] = accumulate.clone() if key not in sums else sums[key].add_(accumulate)
        sources.append({"path": str(file), "global_step": _step(checkpoint)})
        if index == 0 or _step(checkpoint) >= _step(newest):
            newest = {key: value for key, value in checkpoint.items() if key not in TRAINING_STATE_KEYS}
        del checkpoint, state

    averaged: dict[str, Any] = {}
    shared: dict[tuple[Any, ...], Tensor] = {}
    for key, value in newest["state_dict"].items():
        if not (isinstance(value, Tensor) and value.is_floating_point()):
            averaged[key] = value
            continue
        identity = _storage_key(value)
        if identity not in shared:
            shared[identity] = (sums[key] / len(files)).to(value.dtype)
        averaged[key] = shared[identity]

    result = dict(newest)
    result["state_dict"] = averaged
    library = dict(newest.get(CHECKPOINT_KEY) or {})
    library["averaged_from"] = sources
    result[CHECKPOINT_KEY] = library
    _save(result, out)
    return out


def _save(checkpoint: dict[str, Any], out: Path) -> None:
    """``torch.save`` to a temporary file next to ``out``, then renamed: ``out`` is never half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(handle)
    try:
        torch.save(checkpoint, temporary)
        os.replace(temporary, out)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _peek(path: Path) -> dict[str, Any]:
    """A checkpoint's entries without reading its tensors into memory (memory-mapped, weights-only)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an old or damaged file: let read_checkpoint report it, or read it whole
        checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def latest_checkpoints(directory: str | Path, k: int) -> list[Path]:
    """The ``k`` newest ``*.ckpt`` files of ``directory`` by ``global_step``, oldest first.

    A file linked twice (``last.ckpt``) counts once; of files with the same step (the best and the latest
    checkpoint of one validation) the first by name is taken; outputs of :func:`average_checkpoints` are skipped.
    """
    folder = Path(directory)
    if k < 1:
        raise CheckpointError(f"--last must be >= 1, got {k}")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such directory (give a run's checkpoints/ directory)")
    by_step: dict[int, Path] = {}
    seen: set[Path] = set()
    for file in sorted(folder.glob("*.ckpt"), key=lambda f: (f.is_symlink(), f.name)):  # links after their targets
        if file.resolve() in seen:
            continue
        seen.add(file.resolve())
        checkpoint = _peek(file)
        if "averaged_from" in (checkpoint.get(CHECKPOINT_KEY) or {}):
            continue
        by_step.setdefault(_step(checkpoint), file)
        del checkpoint
    if len(by_step) < k:
        found = ", ".join(f"{p.name} (step {s})" for s, p in sorted(by_step.items())) or "none"
        raise CheckpointError(
            f"{folder}: asked for the last {k} checkpoints but it holds {len(by_step)} of distinct steps ({found}). "
            "Keep more during fit, e.g. a ModelCheckpoint with save_top_k: -1 (every validation) or "
            f"every_n_train_steps, or average fewer"
        )
    return [by_step[step] for step in sorted(by_step)[-k:]]


def average(
    checkpoints: list[str] | None = None,
    output: str | None = None,
    last: int | None = None,
    dir: str | None = None,  # noqa: A002 - the command's --dir
) -> None:
    """Average the weights of checkpoints into one (for validate, test, predict and export; not for resuming).

    ``lightning-diffusion average CKPT CKPT ... --output OUT.ckpt`` averages the files given;
    ``lightning-diffusion average --last K --dir RUN/checkpoints --output OUT.ckpt`` the K newest by step.
    Float weights are averaged (the EMA weights of a run with EMA); integer buffers, hyperparameters and
    metadata come from the newest checkpoint; optimizer and callback states are dropped.

    Args:
        checkpoints: checkpoint files written by ``lightning-diffusion fit``, given after ``average``.
        output: the checkpoint to write (replaced if it exists).
        last: with ``--dir``: average the ``last`` newest checkpoints by training step.
        dir: directory of checkpoints (a run's ``checkpoints/``) to take the newest from.
    """
    if output is None:
        raise SystemExit("error: --output OUT.ckpt is required")
    if (last is None) != (dir is None):
        raise SystemExit("error: --last K and --dir DIR go together")
    if last is not None and checkpoints:
        raise SystemExit("error: give checkpoint files or --last K --dir DIR, not both")
    paths = latest_checkpoints(dir, last) if dir is not None and last is not None else [Path(p) for p in checkpoints or []]
    if not paths:
        raise SystemExit("error: give checkpoints to average (CKPT CKPT ...) or --last K --dir DIR")
    out = average_checkpoints(paths, output)
    for path in paths:
        print(f"  {path}", flush=True)
    print(f"averaged {len(paths)} checkpoints into {out} (weights only: for validate/test/predict/export, not for resuming)")
    print(f"  validate: lightning-diffusion validate -c <recipe or run config.yaml> --ckpt_path {out}")
    tokenizer = "" if (out.resolve().parent.parent / "tokenizer").is_dir() else " --tokenizer <run dir>/tokenizer"
    print(f"  export:   lightning-diffusion export {out} <output dir>{tokenizer}")


def expand_positional_checkpoints(argv: list[str]) -> list[str]:
    """``CKPT ... [options]`` -> ``--checkpoints+=CKPT ... [options]`` (jsonargparse has no variadic positionals).

    Every ``--option`` takes one value unless written ``--option=value`` (``-h``/``--help`` and ``--print_config``
    take none); after ``--`` every argument is a checkpoint.
    """
    flagless = {"-h", "--help", "--print_config"}
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out += [f"--checkpoints+={item}" for item in argv[i + 1 :]]
            break
        if arg.startswith("-"):
            out.append(arg)
            if "=" not in arg and arg not in flagless and i + 1 < len(argv):
                out.append(argv[i + 1])
                i += 1
        else:
            out.append(f"--checkpoints+={arg}")
        i += 1
    return out


average.prepare_args = expand_positional_checkpoints  # type: ignore[attr-defined]


__all__ = ["average", "average_checkpoints", "expand_positional_checkpoints", "latest_checkpoints"]
