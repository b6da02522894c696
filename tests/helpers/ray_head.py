"""A real Ray head node (`ray start --head --block` on loopback, token auth on) for the tests' jobs and sweeps.

The head has its own temp dir, token and ports, so it cannot clash with other Ray instances on the machine;
it is stopped by signalling its own `ray start --block` process (not `ray stop`, which would stop every Ray
instance of the machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cluster import submit
from helpers.net import free_port, wait_until

RAY = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else "ray"
CLIENT_VARIABLES = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")  # would point elsewhere


@dataclass(frozen=True)
class Head:
    """A running head: its job server address, its GCS address, the client environment with its token, its folder."""

    address: str
    gcs: str
    env: dict[str, str]
    root: Path


@contextmanager
def client_environment(head_env: dict[str, str]) -> Iterator[None]:
    """This process talks to the head (its token, none of the variables that would point elsewhere), then as before."""
    keys = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", *CLIENT_VARIABLES)
    saved = {k: os.environ.get(k) for k in keys}
    for key in keys:
        os.environ.pop(key, None)
    os.environ.update({k: head_env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def job_server_answers(address: str) -> bool:
    """Whether the job server at `address` accepts an authenticated request (with the current environment)."""
    try:
        submit.connect(address).list_jobs()
    except (RuntimeError, OSError):
        return False
    return True


@contextmanager
def running_head(num_cpus: int = 2) -> Iterator[Head]:
    """Start a head, yield it once its job server answers, stop it and remove its folder afterwards.

    The caller's process environment is not changed: Head.env holds the token variables for subprocesses, and
    `client_environment(head.env)` gives them to this process for a while.
    """
    root = Path(tempfile.mkdtemp(prefix="rayhead", dir="/tmp"))  # short: Ray's socket paths fit 107 chars
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_TMPDIR=str(root))
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # SIGTERM stops at once (no 30 s drain)
    dashboard, gcs_port = free_port(), free_port()
    ports = {"port": gcs_port, "dashboard-port": dashboard, "min-worker-port": 0, "max-worker-port": 0}
    for flag in ("ray-client-server-port", "node-manager-port", "object-manager-port", "metrics-export-port",
                 "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port"):
        ports[flag] = free_port()
    command = [
        RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
        f"--num-cpus={num_cpus}", f"--temp-dir={root / 'ray'}", "--disable-usage-stats",
        *(f"--{flag}={value}" for flag, value in ports.items()),
    ]
    log = (root / "head.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        with client_environment(env):
            wait_until(lambda: process.poll() is not None or job_server_answers(address), 180, "the head")
        assert process.poll() is None, (root / "head.log").read_text()[-3000:]
        yield Head(address, f"127.0.0.1:{gcs_port}", env, root)
    finally:
        process.send_signal(signal.SIGTERM)  # the --block process drains and stops everything it started
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
