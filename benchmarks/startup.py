"""Start-up time of the ``lightning-diffusion`` command against the imports underneath it.

Each measurement is a fresh process, timed from start to its first output (and to its exit); the median of
``--repeats`` runs is reported. Measured: ``python -c "import torch"``, ``python -c "import lightning.pytorch"``,
``lightning-diffusion --help`` and, with ``--export DIR``, ``lightning-diffusion generate DIR "<text>"`` (first
output on stderr, i.e. the decoding settings, and the first hypothesis on stdout). ``--check`` exits with status 1
when ``--help`` takes longer than ``import torch`` (the command's help must not import Lightning). Timings on a
shared machine are noisy: compare medians from one session.

    python -m benchmarks.startup --repeats 3 --export exported/ --check
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_RESULTS, envelope, write_json


@dataclass
class Timing:
    """Seconds from start to the first output on either stream, to the first stdout line, and to exit."""

    first_output: float | None
    first_stdout_line: float | None
    exit: float


def console_script() -> list[str]:
    """The installed ``lightning-diffusion`` next to this interpreter (else on PATH, else the dispatcher module)."""
    script = Path(sys.executable).parent / "lightning-diffusion"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("lightning-diffusion")
    return [found] if found else [sys.executable, "-m", "lightning_diffusion"]


def time_command(command: Sequence[str], timeout: float = 300.0) -> Timing:
    """Run ``command`` once (stdin closed) and time its first output, first stdout line and exit."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    proc = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first_output = first_line = None
    pending = b""
    with selectors.DefaultSelector() as selector:
        assert proc.stdout is not None and proc.stderr is not None
        selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
        selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
        open_streams = 2
        while open_streams and time.perf_counter() - start < timeout:
            for key, _ in selector.select(timeout=1.0):
                data = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
                now = time.perf_counter() - start
                if not data:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                first_output = first_output if first_output is not None else now
                if key.data == "stdout" and first_line is None:
                    pending += data
                    if b"\n" in pending:
                        first_line = now
    if proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - start))) != 0:
        raise RuntimeError(f"{' '.join(command)} exited with status {proc.returncode}")
    return Timing(first_output, first_line, time.perf_counter() - start)


def commands(export: Path | None, text: str) -> dict[str, list[str]]:
    measured = {
        "import torch": [sys.executable, "-c", "import torch"],
        "import lightning.pytorch": [sys.executable, "-c", "import lightning.pytorch"],
        "lightning-diffusion --help": [*console_script(), "--help"],
    }
    if export is not None:
        measured["lightning-diffusion generate EXPORT TEXT"] = [*console_script(), "generate", str(export), text]
    return measured


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def measure(export: Path | None, repeats: int, text: str) -> dict[str, dict[str, Any]]:
    """Median timings per command; the commands are interleaved per repeat so that load changes hit all alike."""
    runs: dict[str, list[Timing]] = {name: [] for name in commands(export, text)}
    for _ in range(repeats):
        for name, command in commands(export, text).items():
            runs[name].append(time_command(command))
    return {
        name: {
            "command": " ".join(command),
            "median_first_output_s": median([t.first_output for t in runs[name]]),
            "median_first_stdout_line_s": median([t.first_stdout_line for t in runs[name]]),
            "median_exit_s": median([t.exit for t in runs[name]]),
            "exit_s": [round(t.exit, 3) for t in runs[name]],
        }
        for name, command in commands(export, text).items()
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = ["| command | first output (s) | first stdout line (s) | exit (s) |", "|---|---:|---:|---:|"]
    for name, row in results.items():
        lines.append(
            f"| `{name}` | {cell(row['median_first_output_s'])} | {cell(row['median_first_stdout_line_s'])} "
            f"| {cell(row['median_exit_s'])} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per command (median reported; default 3)")
    parser.add_argument("--export", type=Path, default=None, help="an export directory: also time `generate` with it")
    parser.add_argument("--text", default="Tom is here.", help="the sentence `generate` translates")
    parser.add_argument("--check", action="store_true", help="exit 1 when --help is slower than `import torch`")
    parser.add_argument("--out", type=Path, default=None, help=f"write JSON here (e.g. {DEFAULT_RESULTS}/startup.json)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    results = measure(args.export, args.repeats, args.text)
    print(table(results))
    print(f"(median of {args.repeats} runs each; load average {os.getloadavg()[0]:.2f} at the end)")
    if args.out is not None:
        settings = {"repeats": args.repeats, "export": str(args.export) if args.export else None, "text": args.text}
        write_json(args.out, {**envelope("startup", argv, "benchmarks.startup", settings), "results": results})
    if args.check:
        help_s = results["lightning-diffusion --help"]["median_exit_s"]
        torch_s = results["import torch"]["median_exit_s"]
        if help_s > torch_s:
            print(f"check failed: --help took {help_s:.2f}s, more than `import torch` ({torch_s:.2f}s)", file=sys.stderr)
            return 1
        print(f"check passed: --help {help_s:.2f}s <= import torch {torch_s:.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
