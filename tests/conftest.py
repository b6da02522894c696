"""Session fixtures shared by the tune_jobs and analysis tests: one small real sweep, run once.

`sweep_experiment` is the experiment directory of a 6-trial ASHA sweep of 2-worker gloo DDP trials on
digits, run through the CLI (`python -m tune_jobs run`) on a local Ray cluster. While it runs, one
worker of a trial is SIGKILLed once its first epoch is checkpointed (`sweep_run.killed` says which), so the
same sweep also shows a trial retried from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tune_jobs.layout import TRAIN_RUNS

REPO = Path(__file__).resolve().parents[1]
SWEEP_TIMEOUT_S = 900
CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of registered checkpoints

SMALL_SWEEP: dict[str, Any] = {
    "description": "test sweep: 6 trials of 2-worker DDP on digits, ASHA rungs at epochs 2 and 4",
    "train": {
        "dataset": "digits", "network": "preactresnet18", "width": 0.125, "batch_size": 128, "lr": 0.1,
        "weight_decay": 5e-4, "lr_schedule": "cosine", "eval_test": "end",
    },
    "search": {
        "alpha": {"loguniform": [0.2, 4.0]},
        "mix_layers": {"choice": ["0,4", "4", "0,2"]},
        "eps": {"loguniform": [0.01, 1.0]},
        "cost_scaling": "mean",
    },
    "scheduler": {"kind": "asha", "metric": "val_acc", "mode": "max", "max_t": 4, "grace_period": 2,
                  "reduction_factor": 2},
    "num_samples": 6,
    "max_concurrent_trials": 2,
    "max_failures": 2,
    "checkpoint_every": 1,  # the worker kill below waits for epoch 1's checkpoint
    "seed": 3,
    "scaling": {"num_workers": 2, "cpus_per_worker": 0.49, "trial_cpus": 0.01},
}


def read_results(experiment: Path) -> dict[str, list[dict[str, Any]]]:
    """trial_id -> the rows Tune logged (complete once the CLI has finished)."""
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


@dataclass
class TuneCli:
    """Runs `python -m tune_jobs` in a subprocess with its output in a log file."""

    root: Path

    def start(self, *args: str, log: str) -> subprocess.Popen:
        """Start the CLI (from the repository root, as README does)."""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("RAY_ADDRESS", None)
        with open(self.root / log, "ab") as fh:
            return subprocess.Popen([sys.executable, "-m", "tune_jobs", *args], cwd=REPO, env=env, stdout=fh,
                                    stderr=subprocess.STDOUT)

    def write_sweep(self, sweep: dict[str, Any], name: str) -> Path:
        """Write a sweep YAML file; returns its path."""
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(sweep))
        return path

    def log(self, name: str) -> str:
        return (self.root / name).read_text(errors="replace")

    def wait(self, proc: subprocess.Popen, until: Callable[[], Any], what: str, timeout: float) -> Any:
        """Poll until() until it returns something truthy; fail if the CLI exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := until():
                return found
            if proc.poll() is not None:
                pytest.fail(f"the sweep exited ({proc.returncode}) before {what}")
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        pytest.fail(f"timed out waiting for {what}")


@dataclass(frozen=True)
class SweepRun:
    """The shared sweep: its experiment directory, the worker killed during it, its wall time."""

    experiment: Path
    killed: dict[str, Any]
    seconds: float
    output: str


@pytest.fixture(scope="session")
def tune_cli(tmp_path_factory: pytest.TempPathFactory) -> TuneCli:
    return TuneCli(tmp_path_factory.mktemp("tune_cli"))


@pytest.fixture(scope="session")
def sweep_run(tune_cli: TuneCli) -> SweepRun:
    """Run SMALL_SWEEP once; SIGKILL rank 1 of the first trial whose epoch-1 checkpoint is registered (mid-epoch 2)."""
    config = tune_cli.write_sweep(SMALL_SWEEP, "small")
    storage = tune_cli.root / "runs"
    experiment = storage / "small"
    start = time.monotonic()
    proc = tune_cli.start("run", str(config), "--storage", str(storage), "--name", "small", log="small.log")

    def first_epoch() -> dict[str, Any] | None:
        for trial_id, report in latest_reports(experiment).items():
            if report["epoch"] == 1:  # grace_period 2: ASHA cannot stop it before epoch 2
                return {"trial_id": trial_id, "pid": report["pid_by_rank"][1], "after_epoch": 1}
        return None

    killed = tune_cli.wait(proc, first_epoch, "a trial's first epoch", SWEEP_TIMEOUT_S)
    os.kill(killed["pid"], signal.SIGKILL)
    try:
        rc = proc.wait(timeout=SWEEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        pytest.fail("the shared sweep did not finish in time")
    output = tune_cli.log("small.log")
    assert rc == 0, output[-4000:]
    return SweepRun(experiment, killed, time.monotonic() - start, output)


@pytest.fixture(scope="session")
def sweep_experiment(sweep_run: SweepRun) -> Path:
    """The shared sweep's experiment directory (trials.parquet, epochs.parquet, sweep.json, trial dirs)."""
    return sweep_run.experiment
