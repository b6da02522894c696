"""Ray's cost per trial: one tune_jobs trial vs the same epochs run by the plain trainer, side by side.

Both sides train the quickstart recipe (digits, PreActResNet-18 at --width, --workers-rank gloo DDP on this
CPU, fixed hyperparameters, --epochs epochs, every epoch reported):
- plain: torch.multiprocessing spawns the ranks, each builds alignmixup's Trainer and calls fit();
- ray: a one-trial sweep through tune_jobs.driver (a local Ray cluster, Tune's function trainable, a
  TorchTrainer with TuneReportCallback, a checkpoint from rank 0 every epoch), ray.init included.
Figures per side (medians over --rounds rounds, sides alternating): seconds from launch to the first epoch's
report, seconds between consecutive reports, the epochs' own compute time (EpochMetrics.epoch_time_s), and
the wall time of the whole run. Ray's per-epoch report cost = its interval minus the plain interval.

    python -m benchmarks.ray_overhead --epochs 4 --rounds 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from alignmixup.config import TrainConfig
from benchmarks._machine import add_common_args, print_table, save, setup


def sweep_config(args: argparse.Namespace, storage: str, name: str) -> dict[str, Any]:
    """A one-trial FIFO sweep of the quickstart recipe with fixed hyperparameters."""
    return {
        "name": name, "storage": storage, "seed": args.seed, "num_samples": 1, "max_failures": 0,
        "train": {"dataset": "digits", "network": "preactresnet18", "width": args.width,
                  "batch_size": args.batch, "lr": 0.1, "weight_decay": 5e-4, "lr_schedule": "cosine",
                  "eval_test": "never"},
        "search": {"alpha": 1.0, "mix_layers": "0,4", "eps": 0.1, "cost_scaling": "mean", "method": "alignmixup"},
        "scheduler": {"kind": "fifo", "max_t": args.epochs},
        "scaling": {"num_workers": args.workers, "cpus_per_worker": round(0.98 / args.workers, 2),
                    "trial_cpus": 0.01},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plain_rank(rank: int, world: int, port: int, train: dict[str, Any], out: str) -> None:
    """One rank of the plain run: rank 0 appends (wall time, metrics) per epoch to `out`."""
    from alignmixup.trainer import Trainer

    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    trainer = Trainer(TrainConfig.model_validate(train))
    rows: list[dict[str, Any]] = []

    def report(m: Any) -> None:
        rows.append({"at": time.time(), **m.as_dict()})

    trainer.fit(on_epoch=report)
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    if world > 1:
        dist.destroy_process_group()


def run_plain(args: argparse.Namespace, train: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Spawn the ranks, train, return the per-epoch report times (wall clock) and epoch compute times."""
    out = folder / "plain.json"
    start = time.time()
    mp.spawn(_plain_rank, args=(args.workers, _free_port(), train, str(out)), nprocs=args.workers, join=True)
    wall = time.time() - start
    rows = json.loads(out.read_text())
    return summarise(start, wall, [r["at"] for r in rows], [r["epoch_time_s"] for r in rows])


def run_ray(args: argparse.Namespace, folder: Path, name: str) -> dict[str, Any]:
    """One trial through tune_jobs (a fresh local Ray cluster each time), timed from before ray.init."""
    import ray

    from tune_jobs import driver
    from tune_jobs.config import validate

    sweep = validate(sweep_config(args, str(folder), name))
    experiment = str(folder / name)
    start = time.time()
    outcome = driver.run(sweep, experiment)
    wall = time.time() - start
    ray.shutdown()
    epochs = outcome.epochs
    return summarise(start, wall, list(epochs["reported_at"]), list(epochs["epoch_time_s"]))


def summarise(start: float, wall: float, reported_at: list[float], epoch_times: list[float]) -> dict[str, Any]:
    """Seconds to the first report, between reports, of epoch compute, and of the whole run."""
    gaps = [b - a for a, b in itertools.pairwise(reported_at)]
    return {
        "first_report_s": reported_at[0] - start,
        "report_interval_s": statistics.median(gaps) if gaps else float("nan"),
        "epoch_compute_s": statistics.median(epoch_times),
        "wall_s": wall,
        "epochs": len(reported_at),
    }


def main(argv: list[str] | None = None) -> None:
    """Alternate plain and Ray runs for --rounds rounds, print per-round rows and medians, save the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="DDP ranks (gloo) on both sides")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=8492)
    add_common_args(parser)
    parser.set_defaults(rounds=2)
    args = parser.parse_args(argv)
    device = setup(args)
    if device.type != "cpu":
        raise SystemExit("ray_overhead measures the CPU quickstart path: run it with --device cpu")
    from tune_jobs.config import trial_settings, validate

    # the plain side trains exactly the TrainConfig that the sweep's one trial gets (its seed included)
    train = trial_settings(validate(sweep_config(args, "unused", "plain")), {}, 0)[0].model_dump(mode="json")
    os.environ.pop("RAY_ADDRESS", None)  # always a fresh local cluster
    rows = []
    with tempfile.TemporaryDirectory(prefix="ray-overhead-") as tmp:
        folder = Path(tmp)
        for r in range(args.rounds):
            order = ["plain", "ray"] if r % 2 == 0 else ["ray", "plain"]
            for side in order:
                res = run_plain(args, train, folder) if side == "plain" else run_ray(args, folder, f"r{r}")
                rows.append({"round": r, "side": side, **res})
    medians = []
    for side in ("plain", "ray"):
        mine = [row for row in rows if row["side"] == side]
        medians.append({"round": "median", "side": side, **{k: statistics.median(row[k] for row in mine)
                        for k in ("first_report_s", "report_interval_s", "epoch_compute_s", "wall_s", "epochs")}})
    plain, ray_ = medians
    overhead = {
        "startup_overhead_s": ray_["first_report_s"] - plain["first_report_s"],
        "per_epoch_report_cost_s": ray_["report_interval_s"] - plain["report_interval_s"],
        "wall_ratio_ray_vs_plain": ray_["wall_s"] / plain["wall_s"],
    }
    print_table(rows + medians, ["round", "side", "first_report_s", "report_interval_s", "epoch_compute_s",
                                 "wall_s", "epochs"])
    print("  ".join(f"{k}={v:.3g}" for k, v in overhead.items()))
    notes = [
        "first_report_s: launch (before ray.init / mp.spawn) to rank 0's first epoch report; report_interval_s: "
        "median seconds between consecutive epoch reports; epoch_compute_s: the trainer's own training-loop time",
        "per_epoch_report_cost_s = ray interval - plain interval (checkpoint written by rank 0, Tune round trip)",
        f"{args.workers}-rank gloo DDP on both sides, 1 torch thread per rank; sides alternate order each round",
    ]
    save("ray_overhead", device, args, {"rounds": rows, "medians": medians, "overhead": overhead}, notes)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
