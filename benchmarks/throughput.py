"""Training throughput: the library's training step under Lightning ``Trainer.fit`` against a bare PyTorch
loop over the same model (same recipe, same seed, same initial weights) and the same batches.

Each measurement runs in a fresh process (``--worker``), so peak memory is that loop's alone. Tokens/s counts
non-padding source + target tokens of the timed steps. Peak memory: on CUDA ``torch.cuda.max_memory_allocated``
above the allocation before training; on CPU the process' peak resident set size (``VmHWM``, reset just before
training through ``/proc/self/clear_refs``) above the resident size before training (``tracemalloc`` does not
see torch's allocations). Writes ``results/throughput.json`` and ``.md``.

    python -m benchmarks.throughput
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from benchmarks.common import (
    DEFAULT_RESULTS,
    REPO,
    Progress,
    envelope,
    parameter_count,
    peak_memory,
    read_json,
    rel,
    subprocess_env,
    write_json,
)
from benchmarks.systems import TASKS, System, Task, data_root_default, load_systems, select

MODES = ("lightning", "bare")


def identity(batch: Any) -> Any:
    return batch


def to_device(batch: Any, device: str) -> Any:
    import torch

    if device == "cpu":
        return batch
    changes = {
        f.name: getattr(batch, f.name).to(device)
        for f in dataclasses.fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)
    }
    return dataclasses.replace(batch, **changes)


def build(system: System, task: Task, opts: Any, root: str) -> tuple[Any, Any, float | None]:
    """Model, data module and gradient-clip value as the CLI builds them from the recipe (seeded)."""
    from lightning_diffusion.cli import LightningDiffusionCLI
    from lightning_diffusion.data import Seq2SeqDataModule
    from lightning_diffusion.seq2seq import Seq2SeqModule

    recipe, _ = system.resolve_recipe(task)
    if recipe is None:
        raise SystemExit(f"{system.name}: no recipe for {task.name}")
    files = task.files(Path(opts.data_root))
    args = [
        "-c",
        str(recipe),
        *[a for o in system.overlays for a in ("-c", str(REPO / o))],
        "--data.train_file",
        str(files["train"]),
        "--data.val_file",
        str(files["valid"]),
        "--data.test_file",
        str(files["test"]),
        *system.args,
        *task.args,
        *task.system_args.get(system.name, ()),
        *opts.train_arg,
        "--trainer.default_root_dir",
        root,
        "--trainer.logger",
        "false",
    ]
    cli = LightningDiffusionCLI(
        Seq2SeqModule,
        Seq2SeqDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        save_config_callback=None,
        trainer_defaults={"use_distributed_sampler": False},
        args=args,
    )
    return cli.model, cli.datamodule, cli.trainer.gradient_clip_val


class StepTimer(Callback):
    """Times steps ``warmup .. warmup + steps - 1``: from the start of the first to the end of the last."""

    def __init__(self, warmup: int, steps: int, device: str) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.start: float | None = None
        self.end: float | None = None

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self._sync()
            self.start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == self.warmup + self.steps - 1:
            self._sync()
            self.end = time.perf_counter()


def fit_output_vocabularies(model: Any, dm: Any) -> None:
    """Fit the model's output vocabulary (if any) on the training targets, as ``fit`` does in ``on_fit_start``: the
    steps here run outside a ``fit`` with the data module (plain loop or a bare ``Trainer.fit`` on batches)."""
    from lightning_diffusion.output_vocabulary import OutputVocabulary

    ids = model.special_ids
    for part in model.modules():
        if isinstance(part, OutputVocabulary) and not part.fitted:
            part.fit(dm.target_token_counts(model.vocab_size), (ids.eos, ids.pad))


def worker(opts: Any) -> None:
    """One measurement (``--worker lightning|bare``) in this process; writes JSON to ``--worker-out``."""
    import torch
    from torch.utils.data import DataLoader

    systems = select(load_systems(opts.systems_file), opts.systems)
    system, task = systems[0], TASKS[opts.task]
    device = "cuda" if torch.cuda.is_available() and not opts.cpu else "cpu"
    with tempfile.TemporaryDirectory() as root:
        model, dm, clip = build(system, task, opts, root)
        dm.setup("fit")
        total = opts.warmup_steps + opts.steps
        batches = []
        while len(batches) < total:  # several epochs when the training split is tiny
            for batch in dm.train_dataloader():
                batches.append(batch)
                if len(batches) == total:
                    break
        timed = batches[opts.warmup_steps :]
        tokens = int(sum(int(b.src_mask.sum()) + int(b.tgt_mask.sum()) for b in timed))
        padded = int(sum(b.src_mask.numel() + b.tgt_mask.numel() for b in timed))
        model.attach_tokenizer(dm.tokenizer, dm.tokenizer_fingerprint)
        fit_output_vocabularies(model, dm)
        result: dict[str, Any] = {
            "mode": opts.worker,
            "system": system.name,
            "device": device,
            "parameters": parameter_count(model),
            "timed_steps": opts.steps,
            "warmup_steps": opts.warmup_steps,
            "tokens": tokens,
            "padded_tokens": padded,
            "sentences": int(sum(len(b) for b in timed)),
            "gradient_clip_val": clip,
            "torch_threads": torch.get_num_threads(),
        }
        if opts.worker == "lightning":
            from lightning.pytorch import Trainer

            timer = StepTimer(opts.warmup_steps, opts.steps, device)
            trainer = Trainer(
                accelerator="gpu" if device == "cuda" else "cpu",
                devices=1,
                max_steps=total,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                gradient_clip_val=clip,
                limit_val_batches=0,
                num_sanity_val_steps=0,
                callbacks=[timer],
                use_distributed_sampler=False,
                default_root_dir=root,
            )
            loader = DataLoader(batches, batch_size=None, collate_fn=identity)
            with peak_memory(device) as mem:
                start = time.perf_counter()
                trainer.fit(model, train_dataloaders=loader)
                result["fit_wall_seconds"] = round(time.perf_counter() - start, 3)
            if timer.start is None or timer.end is None or trainer.global_step != total:
                raise RuntimeError(f"Lightning ran {trainer.global_step} of {total} steps")
            seconds = timer.end - timer.start
        else:
            model.to(device)
            model.train()
            config = model.configure_optimizers()
            scheduler = None
            if isinstance(config, dict):
                optimizer = config["optimizer"]
                sched = config.get("lr_scheduler")
                scheduler = sched["scheduler"] if isinstance(sched, dict) else sched
            else:
                optimizer = config
            # DiffusionLM's training_step also feeds the per-example losses to its timestep sampler.
            diffusion = hasattr(model, "timestep_sampler")
            batches = [to_device(b, device) for b in batches]

            def step(batch: Any) -> None:
                if diffusion:
                    loss, _, t, per_example = model.compute_losses(batch)
                else:
                    loss, _ = model.evaluation_loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if diffusion:
                    model.timestep_sampler.update(t, per_example)

            with peak_memory(device) as mem:
                for batch in batches[: opts.warmup_steps]:
                    step(batch)
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for batch in timed:
                    step(batch)
                if device == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
        result.update(
            seconds=round(seconds, 4),
            tokens_per_second=round(tokens / seconds, 1),
            sentences_per_second=round(result["sentences"] / seconds, 2),
            ms_per_step=round(1000 * seconds / opts.steps, 2),
            peak_memory_bytes=mem["peak_bytes"],
            memory_method=mem["method"],
        )
    Path(opts.worker_out).write_text(json.dumps(result, indent=2), encoding="utf-8")


def worker_command(opts: Any, system: str, mode: str, out: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.throughput",
        "--worker",
        mode,
        "--worker-out",
        str(out),
        "--systems",
        system,
        "--task",
        opts.task,
        "--steps",
        str(opts.steps),
        "--warmup-steps",
        str(opts.warmup_steps),
        "--data-root",
        opts.data_root,
    ]
    if opts.systems_file:
        cmd += ["--systems-file", opts.systems_file]
    if opts.cpu:
        cmd.append("--cpu")
    return cmd + [f"--train-arg={a}" for a in opts.train_arg]


def main(argv: Sequence[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--task", default="multi30k_en_de", choices=sorted(TASKS))
    parser.add_argument(
        "--systems",
        default="diffuseq,seqdiffuseq,difformer,autoregressive",
        help="comma-separated system names",
    )
    parser.add_argument(
        "--systems-file", default=None, help="JSON list of systems replacing the built-in list"
    )
    parser.add_argument("--steps", type=int, default=50, help="timed optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first")
    parser.add_argument(
        "--repeats", type=int, default=1, help="measurements per mode (alternating); the fastest is kept"
    )
    parser.add_argument(
        "--train-arg", action="append", default=[], help="extra CLI argument for the model/data"
    )
    parser.add_argument("--data-root", default=str(data_root_default()))
    parser.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    parser.add_argument("--cpu", action="store_true", help="measure on CPU even where CUDA is available")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker:
        worker(opts)
        return None
    systems = select(load_systems(opts.systems_file), opts.systems)
    say = Progress("throughput")
    settings = {
        "steps": opts.steps,
        "warmup_steps": opts.warmup_steps,
        "repeats": opts.repeats,
        "train_args": opts.train_arg,
    }
    data = envelope("throughput", argv, "benchmarks.throughput", settings)
    data.update(task=opts.task, systems=[])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for system in systems:
            entry: dict[str, Any] = {"system": system.name, "family": system.family, "modes": {}, "runs": []}
            data["systems"].append(entry)
            reason = system.unavailable(TASKS[opts.task])
            if reason:
                entry.update(status="skipped", error=reason)
                say(f"{system.name}: skipped ({reason})")
                continue
            try:
                for r in range(opts.repeats):
                    for mode in MODES:
                        out = Path(tmp) / f"{system.name}-{mode}-{r}.json"
                        say(f"{system.name}: {mode} loop, {opts.steps} steps (run {r + 1}/{opts.repeats})")
                        proc = subprocess.run(
                            worker_command(opts, system.name, mode, out),
                            cwd=REPO,
                            env=subprocess_env(),
                            capture_output=True,
                            text=True,
                        )
                        if proc.returncode != 0:
                            raise RuntimeError(
                                f"{mode} worker exit {proc.returncode}: " + proc.stderr[-1500:]
                            )
                        result = read_json(out)
                        entry["runs"].append(result)
                        best = entry["modes"].get(mode)
                        if best is None or result["tokens_per_second"] > best["tokens_per_second"]:
                            entry["modes"][mode] = result
                        say(
                            f"{system.name}: {mode}: {result['tokens_per_second']:.0f} tokens/s, "
                            f"{result['ms_per_step']:.1f} ms/step, peak +{result['peak_memory_bytes'] / 2**20:.0f} MiB"
                        )
                lt, bt = entry["modes"]["lightning"], entry["modes"]["bare"]
                entry.update(
                    status="ok",
                    parameters=lt["parameters"],
                    overhead_ratio=round(bt["tokens_per_second"] / lt["tokens_per_second"], 3),
                )
                data["memory_method"] = lt["memory_method"]
                data["device"] = lt["device"]
            except Exception as err:  # noqa: BLE001 - record, continue with the others
                entry.update(status="failed", error=f"{type(err).__name__}: {err}")
                say(f"{system.name}: FAILED: {err}")
    data["wall_seconds"] = round(time.perf_counter() - started, 1)
    path = write_json(Path(opts.results_dir) / "throughput.json", data)
    from benchmarks import report

    report.write_benchmark_outputs(path, plots=False)
    say(f"wrote {rel(path)} ({data['wall_seconds']:.0f} s)")
    return path


if __name__ == "__main__":
    main()
