"""Trials under Ray on one GPU: two packed trials through `alignmixup-tune run`, and a 2-worker NCCL DDP trial on
fractional GPUs.

`sweep`: a two-trial sweep (a grid over two mixing-layer sets) of one-worker trials at 0.5 GPU each, through the
real command line on a new local Ray cluster: preflight, Tune, Train, checkpoints, tables. Each epoch's
gpu_mem_peak_gb is set beside the preflight's estimate for that trial (the peak of the epoch's mixing draws, which
may or may not have hit the worst layer).

`ddp`: one Ray Train run of tune_jobs' worker loop with 2 workers at 0.5 GPU each, which puts both ranks of one
NCCL process group on one device. NCCL does not support that ("Using the same CUDA device multiple times as
different ranks of the same NCCL communicator is not supported"; ncclCommInitRank returns ncclInvalidUsage,
"Duplicate GPU detected"), which is why the preflight refuses such a sweep (tune_jobs.preflight.check_gpu_sharing)
and the presets share GPUs between one-worker trials instead. Expected outcome: failed, with that message;
NCCL_P2P_DISABLE / NCCL_SHM_DISABLE change the transport, not this check. On a CPU the same run uses gloo and
trains.

    python -m benchmarks.ray_check sweep --device cuda
    python -m benchmarks.ray_check ddp --device cuda
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks._machine import add_common_args, device_name, print_table, save, setup
from benchmarks._workloads import synthetic_cifar

ROOT = Path(__file__).resolve().parents[1]
DUPLICATE_GPU = "Duplicate GPU detected"


def sweep_file(data: Path, cuda: bool, width: float, gpu_memory_gb: float | None) -> dict[str, Any]:
    """Two one-worker trials (mix_layers 0,4 and 0,2) of 2 epochs on the synthetic CIFAR-10 directory."""
    scaling: dict[str, Any] = {"num_workers": 1, "trial_cpus": 0.01}
    if cuda:
        scaling.update(use_gpu=True, gpus_per_worker=0.5, cpus_per_worker=2, gpu_memory_gb=gpu_memory_gb)
    else:
        scaling.update(cpus_per_worker=0.49)
    return {
        "description": "gpu check: two packed trials",
        "train": {"dataset": "cifar10", "data_dir": str(data), "network": "preactresnet18", "width": width,
                  "batch_size": 128, "lr_schedule": "cosine", "eval_test": "end", "val_fraction": 0.1},
        "search": {"alpha": 1.0, "eps": 0.1, "cost_scaling": "mean", "mix_layers": {"grid": ["0,4", "0,2"]}},
        "scheduler": {"kind": "fifo", "metric": "val_acc", "mode": "max", "max_t": 2},
        "num_samples": 1, "search_alg": "random", "max_failures": 0, "scaling": scaling,
    }


def run_sweep(args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    """The sweep through `python -m tune_jobs run`; its tables, and the estimates of its trials."""
    import pandas as pd
    import torch

    from alignmixup.memory import estimate_peak_gb
    from tune_jobs.config import validate

    gpu_gb = torch.cuda.get_device_properties(0).total_memory / 1e9 if cuda else None
    raw = sweep_file(synthetic_cifar(args.images), cuda, args.width, gpu_gb)
    with tempfile.TemporaryDirectory(prefix="alignmixup-raycheck-") as work:
        path = Path(work) / "sweep.yaml"
        path.write_text(yaml.safe_dump(raw))
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "tune_jobs", "run", str(path), "--storage", f"{work}/runs",
                               "--name", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.monotonic() - start
        result: dict[str, Any] = {"exit_code": done.returncode, "wall_s": wall,
                                  "output_tail": (done.stdout + done.stderr)[-3000:]}
        experiment = Path(work) / "runs" / "check"
        if (experiment / "trials.parquet").is_file():
            trials = pd.read_parquet(experiment / "trials.parquet")
            epochs = pd.read_parquet(experiment / "epochs.parquet")
            sweep = validate(raw)
            rows = []
            for _, trial in trials.iterrows():
                cfg = sweep.trial_config({"mix_layers": trial["hp_mix_layers"]})
                estimate = estimate_peak_gb(cfg, 1)
                mine = epochs[epochs["trial_id"] == trial["trial_id"]]
                peak = mine["gpu_mem_peak_gb"].max() if "gpu_mem_peak_gb" in mine else None
                rows.append({"trial_id": trial["trial_id"], "status": trial["status"],
                             "mix_layers": trial["hp_mix_layers"], "epochs": int(trial["epochs"]),
                             "images_per_s": float(mine["images_per_s"].iloc[-1]) if len(mine) else None,
                             "gpu_mem_peak_gb": None if peak is None or pd.isna(peak) else float(peak),
                             "estimate_allocated_gb": estimate.allocated_gb, "estimate_peak_gb": estimate.peak_gb,
                             "estimate_mix_layer": estimate.mix_layer})
            result["trials"] = rows
            print_table(rows)
    print(f"sweep exit code {done.returncode} in {wall:.0f} s")
    if done.returncode:
        print(result["output_tail"][-1500:])
    return result


def run_ddp(args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    """Two workers of one Ray Train run at 0.5 GPU each (NCCL on CUDA, gloo on a CPU); what happened."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from alignmixup.config import TrainConfig
    from tune_jobs.worker import train_loop_per_worker

    cfg = TrainConfig(dataset="cifar10", data_dir=synthetic_cifar(args.images), width=args.width, batch_size=128,
                      epochs=1, eval_test="never", val_fraction=0.1, device="cuda" if cuda else "cpu",
                      lr_schedule="cosine")
    resources = {"CPU": 2.0, "GPU": 0.5} if cuda else {"CPU": 0.49}
    env = {"NCCL_DEBUG": "WARN"} if cuda else {}
    ray.init(address="local", runtime_env={"env_vars": env})
    result: dict[str, Any] = {"workers": 2, "resources_per_worker": resources, "backend": "nccl" if cuda else "gloo",
                              "expected": f"failed: {DUPLICATE_GPU} (NCCL: one device, one rank)" if cuda else
                              "trained"}
    start = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="alignmixup-ddp-") as work:
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={"train": cfg.model_dump(mode="json"), "identity": {}},
                scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=cuda, resources_per_worker=resources),
                run_config=ray.train.RunConfig(name="ddp", storage_path=work,
                                               failure_config=ray.train.FailureConfig(max_failures=0)),
            )
            fit = trainer.fit()
            result.update(outcome="trained", world_size=fit.metrics.get("world_size"),
                          gpu_mem_peak_gb=fit.metrics.get("gpu_mem_peak_gb"))
    except Exception as exc:  # the outcome is the figure: record how it failed
        text = f"{type(exc).__name__}: {exc}"
        lines = [line for line in text.splitlines() if DUPLICATE_GPU in line] or text.splitlines()[:3]
        result.update(outcome="failed", error=lines[:3], duplicate_gpu=DUPLICATE_GPU in text)
    finally:
        ray.shutdown()
    result["wall_s"] = time.monotonic() - start
    print(f"2-worker {result['backend']} DDP at {resources}: {result['outcome']} in {result['wall_s']:.0f} s "
          f"(expected: {result['expected']})")
    for line in result.get("error", []):
        print(f"  {line}")
    return result


def main(argv: list[str] | None = None) -> None:
    """Run one check, print what happened and save the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=["sweep", "ddp"])
    parser.add_argument("--images", type=int, default=5120, help="synthetic CIFAR-10 training images")
    parser.add_argument("--width", type=float, default=1.0)
    add_common_args(parser)
    args = parser.parse_args(argv)
    device = setup(args)
    cuda = device.type == "cuda"
    result = run_sweep(args, cuda) if args.check == "sweep" else run_ddp(args, cuda)
    result["device"] = device_name(device)
    save(f"ray_{args.check}", device, args, result, [__doc__.split("\n\n")[1 if args.check == "sweep" else 2]])


if __name__ == "__main__":
    main()
