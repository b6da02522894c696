"""The session's Ray head (`ray start --head`, token auth on): the documented `ray job submit` line, and
alignmixup-cluster's list/status/logs/submit/stop against it."""

from __future__ import annotations

import subprocess
import sys
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
