"""Shared benchmark plumbing: the machine's description, device choice, side-by-side timing, JSON and tables.

Every script times its candidates in interleaved rounds (candidate order rotated each round) and reports
medians, so that a ratio is measured side by side on a shared, noisy machine. On CUDA a timing is taken
with CUDA events between two synchronisations; on a CPU with perf_counter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("torch", "torchvision", "ray", "numpy", "pot", "triton")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: platform, CPU, versions, GPU, threads and the load at the time."""
    gpu = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
               "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count(),
               "cuda": torch.version.cuda}
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {p: _version(p) for p in PACKAGES},
        "device": str(device),
        "gpu": gpu,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def device_label(device: torch.device) -> str:
    """'gpu' or 'cpu': the suffix of a results file."""
    return "gpu" if device.type == "cuda" else "cpu"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """--device, --threads, --rounds, --no-save: the options every benchmark takes."""
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; figures are medians over them")
    parser.add_argument("--no-save", action="store_true", help="print the table only, write no JSON")
    parser.add_argument("--tag", default="", help="results file: <name>[-<tag>]-<cpu|gpu>.json")


def setup(args: argparse.Namespace) -> torch.device:
    """Apply --threads and resolve --device ('auto': CUDA when there is one)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of fn takes, device work included (CUDA events on a GPU, perf_counter on a CPU)."""
    sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, rounds: int, warmup: int = 1
                ) -> dict[str, list[float]]:
    """Time each candidate once per round, the order rotated each round; `warmup` untimed calls each first."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(time_call(fns[name], device))
    return times


def stats(samples: Sequence[float]) -> dict[str, float]:
    """Median, min, max and the number of samples."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of num[r] / den[r]: a ratio that a slow drift of the machine's load cancels out of."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def save(name: str, device: torch.device, args: argparse.Namespace, results: Any, notes: Sequence[str] = ()
         ) -> Path | None:
    """Write benchmarks/results/<name>[-<tag>]-<cpu|gpu>.json (machine, command, arguments, results, notes)."""
    if getattr(args, "no_save", False):
        return None
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if getattr(args, "tag", "") else ""
    path = RESULTS / f"{name}{tag}-{device_label(device)}.json"
    payload = {
        "benchmark": name,
        "command": "python -m benchmarks." + name + (" " + " ".join(sys.argv[1:]) if len(sys.argv) > 1 else ""),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(device),
        "args": vars(args),
        "results": results,
        "notes": list(notes),
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"saved {path.relative_to(RESULTS.parent.parent)}")
    return path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e5 else f"{value:.4g}"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Print rows (dicts) as an aligned text table with the given columns (default: the first row's keys)."""
    if not rows:
        return
    columns = list(columns or rows[0])
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))
