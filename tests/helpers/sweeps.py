"""The tests' sweeps: the shared sweep's settings, running the CLI, and reading what a sweep left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tune_jobs.schema import DECISIONS_TABLE, EPOCHS_TABLE, SCHEDULER_STATE, TRAIN_RUNS, TRIALS_TABLE

REPO = Path(__file__).resolve().parents[2]
SWEEP_TIMEOUT_S = 900
CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of registered checkpoints

# The shared sweep (tests/conftest.py): Optuna's multi-objective search (val_acc up, val_ece down) over 2
# configurations x 2 seeds of 2-worker gloo DDP on digits, ASHA on val_acc with rungs at epochs 2 and 4,
# calibration and FGSM on 128 validation images at the rungs and at the end.
SMALL_SWEEP: dict[str, Any] = {
    "description": "test sweep: 2 configurations x 2 seeds of 2-worker DDP on digits, ASHA rungs at epochs 2 and 4",
    "train": {
        "dataset": "digits", "network": "preactresnet18", "width": 0.125, "batch_size": 128, "lr": 0.1,
        "weight_decay": 5e-4, "lr_schedule": "cosine", "eval_test": "end",
        "evaluation": {"kinds": ["calibration", "fgsm"], "images": 128},
    },
    "search": {
        "alpha": {"loguniform": [0.2, 4.0]},
        "mix_layers": {"choice": ["0,4", "4", "0,2"]},
        "eps": {"loguniform": [0.01, 1.0]},
        "cost_scaling": "mean",
    },
    "repeats": 2,
    "scheduler": {"kind": "asha", "metric": "val_acc", "mode": "max", "max_t": 4, "grace_period": 2,
                  "reduction_factor": 2},
    "search_alg": "optuna",
    "objectives": [{"metric": "val_acc", "mode": "max"}, {"metric": "val_ece", "mode": "min"}],
    "num_samples": 2,
    "max_concurrent_trials": 2,
    "max_failures": 2,
    "checkpoint_every": 1,  # the worker kill waits for epoch 1's checkpoint
    "seed": 3,
    "scaling": {"num_workers": 2, "cpus_per_worker": 0.49, "trial_cpus": 0.01},
}
FIRST_RUNG = SMALL_SWEEP["scheduler"]["grace_period"]


@dataclass(frozen=True)
class SweepRun:
    """The shared sweep: where it is, what was killed during it, the two jobs' output, its wall time."""

    experiment: Path
    killed_worker: dict[str, Any]
    decisions_before_driver_kill: list[dict[str, Any]]
    run_job: str
    resume_job: str
    output: str
    seconds: float
    mlflow: str  # the sweep's MLflow tracking URI


def read_results(experiment: Path) -> dict[str, list[dict[str, Any]]]:
    """trial_id -> the rows Tune logged (complete once the sweep has finished)."""
    return {
        path.parent.name.removeprefix("trial_"): [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(experiment.glob("trial_*/result.json"))
    }


def latest_reports(experiment: Path) -> dict[str, dict[str, Any]]:
    """trial_id -> the metrics of its newest checkpoint that Ray Train has registered, live.

    Read from each Train run's checkpoint_manager_snapshot.json, which the controller rewrites once every
    rank's report of a checkpoint has arrived: a checkpoint folder alone may belong to a report that never
    completed (and is not resumed from). Tune's own result.json reaches storage later.
    """
    out: dict[str, dict[str, Any]] = {}
    for path in experiment.glob(f"{TRAIN_RUNS}/train-*/{CHECKPOINT_SNAPSHOT}"):
        try:
            results = json.loads(path.read_text())["checkpoint_results"]
        except (OSError, json.JSONDecodeError, KeyError):  # being rewritten
            continue
        if results:
            out[path.parent.name.removeprefix("train-")] = max((r["metrics"] for r in results),
                                                                key=lambda m: m["epoch"])
    return out


def scheduler_state(experiment: Path) -> dict[str, Any] | None:
    """The scheduler's persisted state, live (None until its first decision)."""
    try:
        return json.loads((experiment / SCHEDULER_STATE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


@dataclass(frozen=True)
class SweepTables:
    """Everything the shared sweep left: its folder, its tables, the rows each trial reported, its sweep.json."""

    experiment: Path
    trials: pd.DataFrame  # indexed by trial_id
    epochs: pd.DataFrame
    decisions: pd.DataFrame
    results: dict[str, list[dict[str, Any]]]
    sweep: dict[str, Any]


def read_tables(experiment: Path) -> SweepTables:
    """One reader of a finished sweep's tables, read directly (no analysis package)."""
    return SweepTables(
        experiment=experiment,
        trials=pd.read_parquet(experiment / TRIALS_TABLE).set_index("trial_id"),
        epochs=pd.read_parquet(experiment / EPOCHS_TABLE),
        decisions=pd.read_parquet(experiment / DECISIONS_TABLE),
        results=read_results(experiment),
        sweep=json.loads((experiment / "sweep.json").read_text()),
    )


def write_sweep(folder: Path, sweep: dict[str, Any], name: str) -> Path:
    """A sweep YAML file; returns its path."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def tune_cli(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `python -m tune_jobs ARGS` from the repository root (as README does), output into `log`."""
    env = dict(env or os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "tune_jobs", *args], cwd=REPO, env=env, stdout=fh,
                                stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path, timeout_s: float = SWEEP_TIMEOUT_S) -> int:
    """Wait for the CLI; on a timeout interrupt it and fail with the end of its log."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        pytest.fail(f"the sweep did not finish in {timeout_s:.0f} s: {log.read_text(errors='replace')[-3000:]}")
