"""The session's Ray head (`ray start --head`, token auth on): the documented `ray job submit` line,
alignmixup-cluster's list/status/logs/submit/stop against it, and dry runs that check a sweep against it (a CPU-only
head: a GPU preset is refused; the data directory is checked on its node)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from helpers.net import wait_until
from helpers.ray_head import RAY, Head, client_environment
from helpers.sweeps import REPO, SweepRun

from cluster import submit


def helper(head: Head, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run `alignmixup-cluster --address <head> ARGS` in-process; (exit code, stdout)."""
    with client_environment(head.env):
        code = submit.main(["--address", head.address, *args])
    return code, capsys.readouterr().out


def test_token_is_required_and_the_helper_finds_it_without_ray_auth_mode(head: Head) -> None:
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(f"{head.address}/api/jobs/", timeout=10)
    env = {k: v for k, v in head.env.items() if k != "RAY_AUTH_MODE"}  # the token file only
    ray_cli = subprocess.run([RAY, "job", "list", "--address", head.address], env=env, capture_output=True,
                             text=True, timeout=120)
    assert ray_cli.returncode != 0 and "authentication" in (ray_cli.stdout + ray_cli.stderr).lower()
    helper_cli = [sys.executable, "-m", "cluster.submit", "--address", head.address, "list"]
    ours = subprocess.run(helper_cli, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert ours.returncode == 0, ours.stderr


def test_the_shared_sweep_ran_as_two_jobs_and_the_helper_shows_them(
    head: Head, sweep_run: SweepRun, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = helper(head, capsys, "list")
    jobs = {job_id: (status, entrypoint) for job_id, status, entrypoint in (r.split("\t") for r in out.splitlines())}
    assert jobs[sweep_run.run_job][0] == "FAILED"  # its driver was SIGKILLed
    status, entrypoint = jobs[sweep_run.resume_job]
    assert status == "SUCCEEDED" and entrypoint == f"python -m tune_jobs resume {sweep_run.experiment}"
    code, out = helper(head, capsys, "status", sweep_run.resume_job)
    assert code == 0 and out.startswith(f"{sweep_run.resume_job}: SUCCEEDED")
    code, logs = helper(head, capsys, "logs", sweep_run.resume_job)
    assert code == 0 and f"tables in {sweep_run.experiment}" in logs


def test_helper_submits_without_waiting_then_stops_a_sweep(head: Head, capsys: pytest.CaptureFixture[str]) -> None:
    storage = head.root / "stopped-results"
    code, out = helper(head, capsys, "submit", "quickstart", "--storage", str(storage), "--name", "stopped",
                       "--working-dir", str(REPO), "--no-wait", "--submission-id", "to-stop")
    assert (code, out) == (0, "submitted to-stop\n")
    with client_environment(head.env):
        client = submit.connect(head.address)
        wait_until(lambda: "Connected to Ray cluster" in client.get_job_logs("to-stop"), 300, "the second sweep")
    assert helper(head, capsys, "stop", "to-stop") == (0, "to-stop: STOPPED\n")
    code, out = helper(head, capsys, "logs", "--follow", "to-stop")  # returns: the job has ended
    assert code == 0 and "Connected to Ray cluster" in out
    assert not (storage / "stopped" / "trials.parquet").exists()


def dry_run(head: Head, *args: str) -> tuple[int, str, float]:
    """`python -m tune_jobs run ARGS --dry-run --address <head>` from the repository root: (code, the last line of
    stderr, seconds)."""
    env = {**head.env, "PYTHONPATH": os.pathsep.join([str(REPO), head.env.get("PYTHONPATH", "")])}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tune_jobs", "run", *args, "--dry-run", "--address", head.gcs],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, (done.stderr.strip().splitlines() or [""])[-1], time.monotonic() - start


def test_dry_run_of_a_gpu_preset_against_a_cpu_only_head(head: Head) -> None:
    code, err, seconds = dry_run(head, "cifar10-preactresnet18", "--storage", str(head.root / "dry-results"))
    port = head.gcs.rpartition(":")[2]
    assert code == 2 and err.startswith("alignmixup-tune: error: scaling.use_gpu: the cluster at "), err
    assert f":{port} (1 node: CPU 2) has no GPU" in err and seconds < 90


def test_dry_run_checks_the_data_directory_on_the_nodes(head: Head) -> None:
    """A zero-CPU task on the node finds no CIFAR-10 where the sweep says (and downloads nothing)."""
    missing = head.root / "no-cifar"
    sweep = head.root / "cifar.yaml"
    sweep.write_text(json.dumps({
        "train": {"dataset": "cifar10", "data_dir": str(missing), "width": 0.25, "batch_size": 32},
        "scheduler": {"kind": "fifo", "max_t": 1}, "scaling": {"num_workers": 1, "cpus_per_worker": 1},
    }))
    code, err, seconds = dry_run(head, str(sweep), "--storage", str(head.root / "dry-results"))
    assert code == 2 and err.startswith(f"alignmixup-tune: error: train.data_dir {missing}: no such directory"), err
    assert " on node " in err and seconds < 90 and not missing.exists()
