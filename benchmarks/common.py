"""Shared pieces of the benchmarks: machine description, progress lines, JSON envelopes, memory probes,
loading a CLI run (checkpoint + saved config + tokenizer), decoding a split and scoring it."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime as dt
import gc
import importlib
import json
import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
DEFAULT_RESULTS = BENCH_DIR / "results"
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
SCHEMA_VERSION = 1


# ---------------------------------------------------------------------------------------------- progress
class Progress:
    """Prints ``[name +elapsed] message`` lines, flushed, so long runs show where they are."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, message: str) -> None:
        print(f"[{self.name} +{self.elapsed:7.1f}s] {message}", flush=True)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def command_line(argv: Sequence[str] | None, module: str) -> str:
    """The command that reproduces a run: ``python -m <module> <args>`` (args quoted for a POSIX shell)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", "-m", module, *args])


# ---------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, load, torch/lightning/python versions, CUDA device (if any)."""
    import lightning
    import torch

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_total_gib": None,
        "load_average_1m_5m_15m": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "nice": os.nice(0) if hasattr(os, "nice") else None,
    }
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_total_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    try:
        import xformers  # noqa: F401

        info["xformers"] = getattr(xformers, "__version__", "installed")
    except Exception:  # noqa: BLE001 - absent or broken: report as absent
        info["xformers"] = None
    return info


def envelope(
    benchmark: str, argv: Sequence[str] | None, module: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """The fields every results JSON starts with."""
    return {
        "benchmark": benchmark,
        "schema_version": SCHEMA_VERSION,
        "command": command_line(argv, module),
        "date": now_iso(),
        "machine": machine_info(),
        "settings": settings,
    }


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def rel(path: Path | str) -> str:
    """``path`` relative to the repository root when it is inside it or beside it (``../shared/...``), else
    absolute: stable strings in the JSON and in the commands, which run from the repository root."""
    p = Path(path).resolve()
    if p.is_relative_to(REPO):
        return p.relative_to(REPO).as_posix()
    if p.is_relative_to(REPO.parent) and REPO.parent != Path(REPO.anchor):
        return "../" + p.relative_to(REPO.parent).as_posix()  # e.g. ../shared/data/...
    return str(p)


# ---------------------------------------------------------------------------------------------- memory
def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_bytes() -> int | None:
    """Resident set size now (``VmRSS``), bytes."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def trim_heap() -> None:
    """Collect garbage and give freed heap pages back to the OS (glibc ``malloc_trim``) before a baseline."""
    gc.collect()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS (``/proc/self/clear_refs`` value 5,
    Linux >= 4.0). Returns False where that is not possible; the peak is then the process' lifetime peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS since the last :func:`reset_peak_rss` (``VmHWM``), else ``getrusage`` ``ru_maxrss``, bytes."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


@contextlib.contextmanager
def peak_memory(device: str = "cpu") -> Iterator[dict[str, Any]]:
    """Measures the peak memory of the block: on CUDA ``torch.cuda.max_memory_allocated`` above the
    allocation at entry; on CPU the peak RSS (``VmHWM`` after a reset) above the RSS at entry."""
    import torch

    out: dict[str, Any] = {}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out["method"] = "torch.cuda.max_memory_allocated minus memory_allocated at entry"
        yield out
        torch.cuda.synchronize()
        out["peak_bytes"] = torch.cuda.max_memory_allocated() - base
        return
    trim_heap()
    exact = reset_peak_rss()
    base = current_rss_bytes() or 0
    out["method"] = (
        "peak RSS (VmHWM, reset via /proc/self/clear_refs) minus RSS at entry"
        if exact
        else "getrusage ru_maxrss (process lifetime peak) minus RSS at entry"
    )
    yield out
    out["peak_bytes"] = max(0, peak_rss_bytes() - base)


# ---------------------------------------------------------------------------------------------- runs
def ints(value: str) -> list[int]:
    """``"2,5,10"`` -> ``[2, 5, 10]`` (an argparse type; empty items skipped)."""
    return [int(v) for v in value.split(",") if v.strip()]


def floats(value: str) -> list[float]:
    """``"1,1.5"`` -> ``[1.0, 1.5]`` (an argparse type; empty items skipped)."""
    return [float(v) for v in value.split(",") if v.strip()]


def names(value: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]`` (an argparse type; empty items skipped)."""
    return [v.strip() for v in value.split(",") if v.strip()]


def import_object(path: str) -> Any:
    module_name, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


@dataclass
class RunFiles:
    """What one ``lightning-diffusion fit`` run left in its log directory."""

    log_dir: Path
    config: Path
    checkpoint: Path
    tokenizer: Path

    @classmethod
    def find(cls, root: Path) -> RunFiles | None:
        """The newest ``lightning_logs/version_*`` under ``root`` that has a ``last.ckpt``."""
        candidates = sorted(
            (p.parent.parent for p in Path(root).glob("**/checkpoints/last.ckpt")),
            key=lambda p: p.stat().st_mtime,
        )
        if not candidates:
            return None
        log_dir = candidates[-1]
        return cls(
            log_dir, log_dir / "config.yaml", log_dir / "checkpoints" / "last.ckpt", log_dir / "tokenizer"
        )

    def load_config(self) -> dict[str, Any]:
        import yaml

        return yaml.safe_load(self.config.read_text(encoding="utf-8"))


def checkpoint_step(path: Path) -> int | None:
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    step = ckpt.get("global_step")
    return int(step) if step is not None else None


def load_module(run: RunFiles, checkpoint: Path | None = None) -> Any:
    """The run's LightningModule from a checkpoint (``<Class>.load_from_checkpoint``), in eval mode on CPU."""
    config = run.load_config()
    cls = import_object(config["model"]["class_path"])
    module = cls.load_from_checkpoint(str(checkpoint or run.checkpoint), map_location="cpu")
    module.eval()
    return module


def build_datamodule(run: RunFiles, test_file: str | Path, limit: int | None, **overrides: Any) -> Any:
    """The run's data module (class and ``init_args`` from its saved ``config.yaml``) with the run's saved
    tokenizer, reading ``test_file`` and keeping its first ``limit`` examples."""
    config = run.load_config()["data"]
    cls = import_object(config["class_path"])
    args = dict(config.get("init_args") or {})
    args.update(
        tokenizer=str(run.tokenizer),
        test_file=str(test_file),
        max_eval_examples=limit,
        val_file=None,
        predict_file=None,
    )
    args.update(overrides)
    dm = cls(**args)
    dm.setup("test")
    return dm


def attach(module: Any, dm: Any) -> None:
    module.attach_tokenizer(dm.tokenizer, dm.tokenizer_fingerprint)


def build_value(value: Any) -> Any:
    """``{"class_path": ..., "init_args": {...}}`` -> an instance; anything else as is."""
    if isinstance(value, dict) and "class_path" in value:
        return import_object(value["class_path"])(**(value.get("init_args") or {}))
    return value


LEGACY_DECODING_KEYS = {"sampler.steps": "steps"}  # attribute paths of the first results files


def decoding_for(module: Any, overrides: dict[str, Any]) -> Any:
    """The module's own :class:`~lightning_diffusion.decoding.Decoding` with ``overrides`` applied by ``replace``
    (``{"steps": 50}``, ``{"noise_beam": 3}``, ``{"search": {"class_path": ...}}``); the module is not changed.
    An override the module cannot use is an error naming it."""
    from lightning_diffusion.decoding import Decoding

    fields = {f.name for f in dataclasses.fields(Decoding)} | {"steps"}
    changes = {}
    for key, value in overrides.items():
        name = LEGACY_DECODING_KEYS.get(key, key)
        if name not in fields:
            raise ValueError(f"decoding override {key!r}: not a decoding setting (one of {', '.join(sorted(fields))})")
        changes[name] = build_value(value)
    return module.check_decoding(module.decoding.replace(**changes))


def parameter_count(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def model_record(module: Any, path: Path | str, **extra: Any) -> dict[str, Any]:
    """What a one-model benchmark (probe, solvers) says about its model: file, classes, parameters, training step,
    and ``extra`` fields."""
    return {
        "path": rel(path),
        "class": type(module).__name__,
        "denoiser": type(module.denoiser).__name__,
        "parameters": parameter_count(module),
        "train_step": module.checkpoint_step,
        **extra,
    }


def decoding_fields(module: Any, decoding: Any) -> dict[str, Any]:
    """Sampling steps, beams, MBR size and the settings string of a decoding of ``module``."""
    has_length = getattr(module, "length_predictor", None) is not None
    diffusion = decoding.sampler is not None
    return {
        "settings": module.decoding_settings(decoding),
        "sampling_steps": decoding.nfe if diffusion else None,
        "length_beam": decoding.length_beam if diffusion and has_length else None,
        "noise_beam": decoding.noise_beam if diffusion else None,
        "beam_size": None if diffusion else int(decoding.search.beam_size),
    }


# ---------------------------------------------------------------------------------------------- decoding
@dataclass
class Decoded:
    """Hypotheses of a split in input order with the decoding cost."""

    rows: list[dict[str, Any]]
    seconds: float
    nfe: list[int] = field(default_factory=list)  # per batch
    candidates: int = 1
    cpu_seconds: float = 0.0  # process CPU time (all threads) spent in generate

    @property
    def sentences(self) -> int:
        return len(self.rows)

    def summary(self) -> dict[str, Any]:
        n = max(self.sentences, 1)
        nfe_mean = sum(self.nfe) / len(self.nfe) if self.nfe else None
        return {
            "sentences": self.sentences,
            "decode_seconds": round(self.seconds, 3),
            "decode_cpu_seconds": round(self.cpu_seconds, 3),
            "sentences_per_second": round(self.sentences / self.seconds, 3) if self.seconds > 0 else None,
            "ms_per_sentence": round(1000 * self.seconds / n, 2),
            "nfe_mean": round(nfe_mean, 2) if nfe_mean is not None else None,
            "nfe_max": max(self.nfe) if self.nfe else None,
            "candidates": self.candidates,
        }


def decode_batches(module: Any, batches: Sequence[Any] | Any, seed: int = 0, decoding: Any = None) -> Decoded:
    """Decode every batch with :func:`~lightning_diffusion.decoding.decode_batch` (the path of validation and
    predict: per-batch seeds, empty sources left out) in eval mode; timed."""
    from lightning_diffusion.decoding import decode_batch

    module.eval()
    rows: dict[int, dict[str, Any]] = {}
    nfe: list[int] = []
    candidates = 1
    seconds = cpu = 0.0
    for batch in batches:
        start, start_cpu = time.perf_counter(), time.process_time()
        out = decode_batch(module, batch, decoding, seed)
        seconds += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        if out.nfe is not None:
            nfe.append(int(out.nfe))
            candidates = int(out.candidates)
        for row in out.rows:
            rows[row["index"]] = row
    return Decoded(
        rows=[rows[i] for i in sorted(rows)], seconds=seconds, nfe=nfe, candidates=candidates, cpu_seconds=cpu
    )


def score(rows: Sequence[dict[str, Any]], vocabulary: frozenset[str] | None = None) -> dict[str, Any]:
    """sacreBLEU (score + signature), ROUGE-1/2/L F1 (x100, stemmed) against the single references, and the output
    health counts (empty hypotheses, U+FFFD, repeated words and bigrams; with ``vocabulary``, the training
    references' words, hypotheses with an unseen word), from :func:`lightning_diffusion.evaluation.evaluate`."""
    from lightning_diffusion.evaluation import evaluate

    report = evaluate(rows, settings="", samples=0, vocabulary=vocabulary)
    return {
        "bleu": round(report.bleu, 2),
        "bleu_signature": report.signature,
        "rouge1": round(report.rouge1, 2),
        "rouge2": round(report.rouge2, 2),
        "rougeL": round(report.rougeL, 2),
        "empty_hypotheses": report.empty,
        "replacement_char_hypotheses": report.replacement_chars,
        "repeated_word_hypotheses": report.repeats,
        "repeated_bigram_hypotheses": report.repeated_bigrams,
        "unseen_word_hypotheses": report.unseen_words,
    }


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def format_max_time(minutes: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for a (possibly fractional) number of minutes, at least one second."""
    total = max(1, round(minutes * 60))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    mins, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{mins:02d}:{secs:02d}"


def subprocess_env() -> dict[str, str]:
    """Environment of the benchmark's child processes: the repository on ``PYTHONPATH`` (so
    ``benchmarks.callbacks`` imports), warnings quiet."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env
