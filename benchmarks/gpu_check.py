"""The GPU check: every test and figure that needs a CUDA GPU, one step after the other, under 10 minutes.

Each step is a subprocess with its own time limit, sized for an H100/H200 (a step over its limit is stopped and
recorded, and the next one runs, so the whole check ends within the sum of the limits, 540 s):

  step          what                                                                      limit  expected on H100
  cuda_tests    tests/test_alignmixup_cuda.py (no host sync in Sinkhorn, bf16 epoch,      75 s   ~40 s (imports,
                memory estimate vs a measured epoch)                                             two digits epochs)
  sinkhorn      benchmarks.sinkhorn, N 16/64/256, batch 128 x 512 channels, 10 rounds,    90 s   ~60 s (3 compiles)
                eager and torch.compile'd (POT's batched solver when POT is installed)
  train_step    benchmarks.train_step, full width, batch 128, 10 rounds x 10 steps         45 s   ~25 s
  data          benchmarks.data, 20k CIFAR-sized images, 8 DataLoader workers, 3 rounds    45 s   ~30 s
  epoch         benchmarks.epoch, 3 epochs of 50k synthetic CIFAR images, full width       45 s   ~25 s
  packing       benchmarks.packing, 1, 2 and 4 trials on the GPU, 20k images, 3 epochs     75 s   ~50 s
  memory        benchmarks.memory_check: the estimate vs one epoch of each GPU preset's     50 s   ~35 s
                worst trial (gpu_mem_peak_gb), the CUDA context and allocator slack
  ray_sweep     benchmarks.ray_check sweep: two 0.5-GPU trials via `alignmixup-tune run`    70 s   ~50 s
  ray_ddp       benchmarks.ray_check ddp: 2-worker NCCL DDP at 0.5 GPU each (expected to    45 s   ~25 s
                fail: NCCL refuses two ranks on one device)

`--device cpu` runs every step at small sizes (a dry run of the check itself, minutes on a laptop); its JSON files
are tagged `dryrun`. Every step writes benchmarks/results/<name>[-dryrun]-<gpu|cpu>.json; this summary writes
benchmarks/results/gpu_check[-dryrun]-<gpu|cpu>.json (each step's command, exit code, seconds, last lines).

    benchmarks/gpu_check.sh                    # on the GPU machine
    benchmarks/gpu_check.sh --device cpu       # the dry run, here
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._machine import RESULTS, machine, print_table

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Step:
    """One command of the check, at GPU and at dry-run sizes, with its time limit on the GPU."""

    name: str
    gpu: tuple[str, ...]
    cpu: tuple[str, ...]
    limit_s: int


def steps(pot: bool) -> list[Step]:
    """The check's steps (the Sinkhorn benchmark leaves POT out where it is not installed)."""
    no_pot = () if pot else ("--no-pot",)
    bench = (sys.executable, "-m")
    return [
        Step("cuda_tests", (*bench, "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_alignmixup_cuda.py"),
             (*bench, "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_alignmixup_cuda.py"), 75),
        Step("sinkhorn", (*bench, "benchmarks.sinkhorn", "--rounds", "10", *no_pot),
             (*bench, "benchmarks.sinkhorn", "--sizes", "16", "--batch", "8", "--channels", "32", "--rounds", "2",
              "--no-compile", *no_pot), 90),
        Step("train_step", (*bench, "benchmarks.train_step", "--rounds", "10", "--steps", "10"),
             (*bench, "benchmarks.train_step", "--width", "0.125", "--batch", "16", "--rounds", "2", "--steps", "1"),
             45),
        Step("data", (*bench, "benchmarks.data", "--images", "20000", "--workers", "8", "--rounds", "3"),
             (*bench, "benchmarks.data", "--images", "512", "--workers", "1", "--rounds", "2"), 45),
        Step("epoch", (*bench, "benchmarks.epoch", "--images", "50000", "--epochs", "3"),
             (*bench, "benchmarks.epoch", "--images", "320", "--epochs", "2", "--width", "0.125", "--batch", "32"),
             45),
        Step("packing", (*bench, "benchmarks.packing", "--trials", "1", "2", "4", "--images", "20000", "--epochs", "3"),
             (*bench, "benchmarks.packing", "--trials", "1", "2", "--images", "320", "--epochs", "2", "--width",
              "0.125", "--batch", "32", "--threads", "1"), 75),
        Step("memory", (*bench, "benchmarks.memory_check"),
             (*bench, "benchmarks.memory_check", "--small", "--images", "48"), 50),
        Step("ray_sweep", (*bench, "benchmarks.ray_check", "sweep"),
             (*bench, "benchmarks.ray_check", "sweep", "--images", "640", "--width", "0.125"), 70),
        Step("ray_ddp", (*bench, "benchmarks.ray_check", "ddp"),
             (*bench, "benchmarks.ray_check", "ddp", "--images", "640", "--width", "0.125"), 45),
    ]


def run_step(step: Step, cuda: bool, tag: str, scale: float) -> dict[str, object]:
    """Run one step with its limit (scaled on a CPU); its outcome."""
    command = list(step.gpu if cuda else step.cpu)
    if command[2].startswith("benchmarks."):
        command += ["--device", "cuda" if cuda else "cpu", *(("--tag", tag) if tag else ())]
    limit = step.limit_s * scale
    print(f"== {step.name} (limit {limit:.0f} s): {' '.join(command[1:])}", flush=True)
    start = time.monotonic()
    # its own process group: a step stopped at its limit takes what it started with it (trial processes, Ray's)
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    code: int | str
    try:
        output, _ = proc.communicate(timeout=limit)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timed out"
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                output, _ = proc.communicate(timeout=10)
                break
            except subprocess.TimeoutExpired:
                output = ""
    seconds = time.monotonic() - start
    tail = [line for line in output.splitlines() if line.strip()][-25:]
    print("\n".join(tail), flush=True)
    print(f"== {step.name}: exit {code} in {seconds:.0f} s\n", flush=True)
    return {"step": step.name, "command": " ".join(command[1:]), "exit_code": code, "seconds": round(seconds, 1),
            "limit_s": limit, "output_tail": tail}


def main(argv: list[str] | None = None) -> int:
    """Run the steps (or those named), print a summary and save it; exit 1 if a step failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--steps", nargs="+", help="run only these steps")
    parser.add_argument("--cpu-time-scale", type=float, default=6.0,
                        help="the dry run's limits are the GPU's times this (a CPU is slower at even small sizes)")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    import torch

    if cuda and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    tag = "" if cuda else "dryrun"
    chosen = [s for s in steps(importlib.util.find_spec("ot") is not None) if not args.steps or s.name in args.steps]
    start = time.monotonic()
    rows = [run_step(s, cuda, tag, 1.0 if cuda else args.cpu_time_scale) for s in chosen]
    total = time.monotonic() - start
    print_table([{k: r[k] for k in ("step", "exit_code", "seconds", "limit_s")} for r in rows])
    print(f"total {total:.0f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"gpu_check{'-' + tag if tag else ''}-{'gpu' if cuda else 'cpu'}.json"
    payload = {"benchmark": "gpu_check", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "machine": machine(torch.device("cuda" if cuda else "cpu")), "total_s": round(total, 1),
               "environment": {k: os.environ[k] for k in ("NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE") if k in os.environ},
               "steps": rows}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"saved {path.relative_to(ROOT)}")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
