"""Session fixtures: one Ray head node, and one real sweep on it that every sweep and analysis test reads.

`head` is a `ray start --head` on loopback with token auth (tests/helpers/ray_head.py). `sweep_run` sends the
shared sweep (tests/helpers/sweeps.py SMALL_SWEEP: 2 configurations x 2 seeds of 2-worker gloo DDP on digits,
ASHA) with the documented `ray job submit` line, and while it runs:
- SIGKILLs rank 1 of the first trial whose epoch-1 checkpoint is registered: Ray Train restarts the workers from
  that checkpoint;
- SIGKILLs the sweep's driver (the job's entrypoint) once ASHA has recorded two trials at its first rung;
then sends `alignmixup-tune resume` the same way, which finishes the sweep and writes its tables. So the one
sweep shows a worker retry, a driver loss and a resume that keeps ASHA's rungs, besides the tables themselves; every
trial is tracked in TensorBoard, an MLflow file store and W&B offline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.net import wait_until
from helpers.ray_head import Head, client_environment, running_head
from helpers.sweeps import (
    FIRST_RUNG,
    REPO,
    SMALL_SWEEP,
    SWEEP_TIMEOUT_S,
    SweepRun,
    SweepTables,
    latest_reports,
    read_tables,
    scheduler_state,
    write_sweep,
)

from cluster import submit


@pytest.fixture(scope="session")
def head() -> Iterator[Head]:
    """A 2-CPU Ray head for the session."""
    with running_head(num_cpus=2) as running:
        yield running


def _job_line(head: Head, *args: str) -> str:
    """The documented `ray job submit` line (cluster/README.md) for `python -m tune_jobs ARGS`."""
    return submit.ray_job_submit_line(["python", "-m", "tune_jobs", *args], head.address)


@pytest.fixture(scope="session")
def sweep_run(head: Head) -> SweepRun:
    folder = Path(tempfile.mkdtemp(prefix="sweep", dir=head.root))
    tracked = {**SMALL_SWEEP, "tracking": {"tensorboard": True, "mlflow": f"file:{folder / 'mlruns'}",
                                           "wandb": {"project": "shared", "mode": "offline"}}}
    config = write_sweep(folder, tracked, "shared")
    storage = head.root / "results"
    experiment = storage / "shared"
    start = time.monotonic()
    log = folder / "run.log"
    with open(log, "wb") as out:
        run = subprocess.Popen(_job_line(head, "run", str(config), "--storage", str(storage), "--name", "shared"),
                               shell=True, cwd=REPO, env=head.env, stdout=out, stderr=subprocess.STDOUT)

    def first_epoch() -> dict[str, Any] | None:
        if run.poll() is not None:
            pytest.fail(f"the sweep job ended early: {log.read_text(errors='replace')[-3000:]}")
        for trial_id, report in latest_reports(experiment).items():
            if report["epoch"] == 1:  # ASHA cannot stop it before its first rung
                return {"trial_id": trial_id, "pid": report["pid_by_rank"][1], "after_epoch": 1}
        return None

    killed = wait_until(first_epoch, SWEEP_TIMEOUT_S, "a trial's first epoch")
    os.kill(killed["pid"], signal.SIGKILL)

    def first_rung_twice() -> list[dict[str, Any]] | None:
        if run.poll() is not None:
            pytest.fail(f"the sweep job ended early: {log.read_text(errors='replace')[-3000:]}")
        state = scheduler_state(experiment)
        decisions = state["decisions"] if state else []
        return decisions if sum(d["milestone"] == FIRST_RUNG for d in decisions) >= 2 else None

    decisions = wait_until(first_rung_twice, SWEEP_TIMEOUT_S, "two decisions at the first rung")
    with client_environment(head.env):
        client = submit.connect(head.address)
        (job,) = [j for j in client.list_jobs() if " run " in j.entrypoint]
        os.kill(int(client.get_job_info(job.submission_id).driver_info.pid), signal.SIGKILL)
        wait_until(lambda: str(client.get_job_status(job.submission_id)) == "FAILED", 120, "the job to fail")
    run.wait(timeout=120)

    resumed = subprocess.run(_job_line(head, "resume", str(experiment)), shell=True, cwd=REPO, env=head.env,
                             capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
    output = log.read_text(errors="replace") + resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-5000:]
    with client_environment(head.env):
        jobs = submit.connect(head.address).list_jobs()
    (resume_job,) = [j.submission_id for j in jobs if " resume " in j.entrypoint]
    return SweepRun(experiment, killed, decisions, job.submission_id, resume_job, output, time.monotonic() - start,
                    tracked["tracking"]["mlflow"])


@pytest.fixture(scope="session")
def sweep_experiment(sweep_run: SweepRun) -> Path:
    """The shared sweep's experiment directory (tables, decisions, sweep.json, Ray's trial folders)."""
    return sweep_run.experiment


@pytest.fixture(scope="session")
def sweep_tables(sweep_run: SweepRun) -> SweepTables:
    """The shared sweep's tables, read directly."""
    return read_tables(sweep_run.experiment)
