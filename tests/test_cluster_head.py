"""A real head node (`ray start --head` on loopback, token auth on) running sweeps sent with `ray job submit`.

The head has its own temp dir, token and ports, so it cannot clash with other Ray instances on the machine;
it is stopped by signalling its own `ray start --block` process (not `ray stop`, which would stop every
Ray instance of the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from cluster import submit

REPO = Path(submit.__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else "ray"
NUM_SAMPLES = 2
CLIENT_VARIABLES = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")  # would point elsewhere


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Head:
    """A running head: its job server address, its GCS address, the client environment that holds its token, its
    folder."""

    address: str
    gcs: str
    env: dict[str, str]
    root: Path


def wait_until(condition: object, timeout_s: float, what: str) -> None:
    """Poll `condition()` until it is true; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


def job_server_answers(address: str) -> bool:
    """Whether the job server at `address` accepts an authenticated request."""
    try:
        submit.connect(address).list_jobs()
    except (RuntimeError, OSError):
        return False
    return True


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    """`ray start --head --block`, token auth on, on 127.0.0.1; the module's client env holds its token."""
    root = Path(tempfile.mkdtemp(prefix="rayhead", dir="/tmp"))  # short: Ray's socket paths fit 107 chars
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_TMPDIR=str(root))
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # SIGTERM stops at once (no 30 s drain)
    dashboard = free_port()
    ports = {"port": free_port(), "dashboard-port": dashboard, "min-worker-port": 0, "max-worker-port": 0}
    for flag in ("ray-client-server-port", "node-manager-port", "object-manager-port", "metrics-export-port",
                 "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port"):
        ports[flag] = free_port()
    command = [
        RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
        "--num-cpus=2", f"--temp-dir={root / 'ray'}", "--disable-usage-stats",
        *(f"--{flag}={value}" for flag, value in ports.items()),
    ]
    log = (root / "head.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_TMPDIR"):
                mp.setenv(key, env[key])
            for key in CLIENT_VARIABLES:
                mp.delenv(key, raising=False)
            wait_until(lambda: process.poll() is not None or job_server_answers(address), 180, "the head")
            assert process.poll() is None, (root / "head.log").read_text()[-3000:]
            yield Head(address, f"127.0.0.1:{ports['port']}", env, root)
    finally:
        process.send_signal(signal.SIGTERM)  # the --block process drains and stops everything it started
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def helper(head: Head, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run `python -m cluster.submit --address <head> ARGS` in-process; (exit code, stdout)."""
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


def test_quickstart_via_ray_job_submit_then_helper_status_logs_stop(
    head: Head, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = head.root / "results"
    args = submit.sweep_args("quickstart", str(storage), "quickstart-job", NUM_SAMPLES, working_dir=REPO)
    line = submit.ray_job_submit_line(args, head.address)  # exactly what cluster/README.md documents
    done = subprocess.run(line, shell=True, cwd=REPO, env=head.env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

    code, out = helper(head, capsys, "list")
    ((job_id, status, entrypoint),) = [row.split("\t") for row in out.splitlines()]
    assert (status, entrypoint) == ("SUCCEEDED", " ".join(args))
    code, out = helper(head, capsys, "status", job_id)
    assert code == 0 and out.startswith(f"{job_id}: SUCCEEDED")
    code, logs = helper(head, capsys, "logs", job_id)
    assert code == 0 and f"tables in {storage / 'quickstart-job'}" in logs

    experiment = storage / "quickstart-job"
    trials = pd.read_parquet(experiment / "trials.parquet")
    epochs = pd.read_parquet(experiment / "epochs.parquet")
    assert len(trials) == NUM_SAMPLES and set(trials["status"]) == {"TERMINATED"}
    assert (trials["num_workers"] == 2).all() and set(epochs["trial_id"]) == set(trials["trial_id"])
    assert (epochs["world_size"] == 2).all()
    assert (experiment / "trials.csv").is_file() and (experiment / "sweep.json").is_file()

    # a second sweep, sent by the helper without waiting, then stopped by it
    code, out = helper(head, capsys, "submit", "quickstart", "--storage", str(storage), "--name", "stopped",
                       "--working-dir", str(REPO), "--no-wait", "--submission-id", "to-stop")
    assert (code, out) == (0, "submitted to-stop\n")
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
    return done.returncode, done.stderr.strip().splitlines()[-1], time.monotonic() - start


def test_dry_run_of_a_gpu_preset_against_a_cpu_only_head(head: Head) -> None:
    code, err, seconds = dry_run(head, "cifar10-preactresnet18", "--storage", str(head.root / "results"))
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
    code, err, seconds = dry_run(head, str(sweep), "--storage", str(head.root / "results"))
    assert code == 2 and err.startswith(f"alignmixup-tune: error: train.data_dir {missing}: no such directory"), err
    assert " on node " in err and seconds < 90 and not missing.exists()
