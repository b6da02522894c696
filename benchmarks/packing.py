"""Trial packing: aggregate training throughput of 1, 2 and 4 concurrent trials sharing one GPU.

Each trial is a separate process (as Ray Tune runs trials with fractional GPUs) that trains a PreActResNet-18
AlignMixup Trainer for `--epochs` epochs on the same synthetic CIFAR-10 directory and reports, per epoch, when
it ended and how many images it trained. The first `--warmup` epochs are left out; the aggregate is all trials'
timed images over the wall-clock window from the first timed epoch's start to the last one's end.
A GPU figure: on a CPU the script runs unchanged but the trials only share the CPU's cores.

    python -m benchmarks.packing --trials 1 2 4 --images 20000 --epochs 3 --width 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._machine import add_common_args, device_name, print_table, save, setup
from benchmarks._workloads import make_trainer, synthetic_cifar

ROOT = Path(__file__).resolve().parents[1]
TAG = "PACKING-EPOCHS "


def worker(args: argparse.Namespace) -> None:
    """One trial: train, then print one line with each epoch's (start, end, images) on the wall clock."""
    device = setup(args)
    tr = make_trainer(Path(args.data_dir), args.method, device, width=args.width, batch_size=args.batch,
                      epochs=args.epochs, val_fraction=0.0)
    epochs: list[tuple[float, float, int]] = []
    last = time.time()

    def on_epoch(m: object) -> None:
        nonlocal last
        now = time.time()
        epochs.append((last, now, m.train_samples))  # type: ignore[attr-defined]
        last = now

    tr.fit(on_epoch=on_epoch)
    print(TAG + json.dumps(epochs), flush=True)


def run_trials(k: int, args: argparse.Namespace, data: Path, threads: int | None) -> list[list[list[float]]]:
    """Start k trial processes together and collect each one's epochs."""
    cmd = [sys.executable, "-m", "benchmarks.packing", "--worker", "--data-dir", str(data), "--device", args.device,
           "--width", str(args.width), "--batch", str(args.batch), "--epochs", str(args.epochs),
           "--method", args.method]
    if threads:
        cmd += ["--threads", str(threads)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"a trial process failed with code {p.returncode}")
        line = next(x for x in stdout.splitlines() if x.startswith(TAG))
        out.append(json.loads(line[len(TAG):]))
    return out


def aggregate(trials: list[list[list[float]]], warmup: int) -> dict[str, float]:
    """Images/s of all trials together over the window their timed epochs span, and each trial's mean rate."""
    timed = [t[warmup:] for t in trials]
    start = min(t[0][0] for t in timed)
    end = max(t[-1][1] for t in timed)
    images = sum(e[2] for t in timed for e in t)
    per_trial = [sum(e[2] for e in t) / (t[-1][1] - t[0][0]) for t in timed]
    return {"aggregate_images_per_s": images / (end - start), "window_s": end - start,
            "mean_trial_images_per_s": sum(per_trial) / len(per_trial)}


def main(argv: list[str] | None = None) -> None:
    """Run 1, 2, 4 concurrent trials, print the table and save the JSON (or be one trial with --worker)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--images", type=int, default=20_000, help="synthetic training-set size")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="epochs of each trial left out of the figures")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--method", default="alignmixup", choices=["alignmixup", "mixup", "manifold", "erm"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if args.epochs <= args.warmup:
        raise SystemExit("--epochs must exceed --warmup")
    device = setup(args)
    data = synthetic_cifar(args.images)
    cpus = len(os.sched_getaffinity(0))
    rows = []
    for k in args.trials:
        threads = args.threads or (max(1, cpus // k) if device.type == "cpu" else None)
        agg = aggregate(run_trials(k, args, data, threads), args.warmup)
        rows.append({"trials": k, "device": device_name(device), **agg, "threads_per_trial": threads})
    for row in rows:
        row["speedup_vs_1"] = row["aggregate_images_per_s"] / rows[0]["aggregate_images_per_s"]
    print_table(rows, ["trials", "aggregate_images_per_s", "mean_trial_images_per_s", "speedup_vs_1", "window_s",
                       "threads_per_trial"])
    notes = [
        f"each trial: a process training PreActResNet-18 width {args.width} {args.method} for {args.epochs} epochs "
        f"over {args.images} synthetic CIFAR images (no validation split); the first {args.warmup} epoch(s) "
        "left out",
        "trials start together; aggregate = timed images of all trials / the window their timed epochs span",
    ]
    if device.type != "cuda":
        notes.append("CPU run: the trials share this machine's cores, not a GPU; the packing figure is a GPU one")
    save("packing", device, args, rows, notes)


if __name__ == "__main__":
    main()
