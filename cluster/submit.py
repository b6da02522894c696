"""Submit alignmixup sweeps to a Ray cluster and follow them: submit, status, logs, stop, list.

The client side of `ray job submit`, with Ray's own conventions: the address is --address, else
RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else the local dashboard http://127.0.0.1:8265 (an SSH
tunnel or `kubectl port-forward` to a remote head); the token is RAY_AUTH_TOKEN, else the file named by
RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token, sent as `Authorization: Bearer <token>`. Unlike Ray's own
CLI, it sends the token whenever one is found (as `ray start` turns token auth on whenever one exists),
so RAY_AUTH_MODE=token is not needed on the client; RAY_AUTH_MODE=disabled turns it off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import yaml

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
RUNTIME_ENV_FILE = Path(__file__).with_name("runtime_env.yaml")
RUNTIME_ENV_ARG = "cluster/runtime_env.yaml"  # the same file, as named from the repository root
SWEEP_COMMAND = ("python", "-m", "tune_jobs", "run")
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


class ClusterError(Exception):
    """A submission problem, reported as one line."""


def resolve_address(flag: str | None) -> str:
    """The job server address: the flag, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else the local one."""
    return (
        flag or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    )


def find_token() -> str | None:
    """The cluster's auth token where Ray looks for it, or None (no token, or RAY_AUTH_MODE=disabled)."""
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode == "disabled":
        return None
    if token := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return token
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named).expanduser() if named else Path.home() / ".ray" / "auth_token"
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if not token and named:
        raise ClusterError(f"RAY_AUTH_TOKEN_PATH={named}: no token in that file")
    if not token and mode == "token":
        raise ClusterError(
            "RAY_AUTH_MODE=token but no token found: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, "
            "or write it to ~/.ray/auth_token (`ray get-auth-token`)"
        )
    return token or None


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def connect(address: str | None = None) -> Any:
    """A JobSubmissionClient for the resolved address that sends the token, if there is one."""
    from ray.job_submission import JobSubmissionClient

    resolved = resolve_address(address)
    token = find_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    # Ray lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the address argument; pin the resolved one.
    with _environ(RAY_API_SERVER_ADDRESS=resolved):
        return JobSubmissionClient(resolved, headers=headers)


def known_presets() -> list[str]:
    """Names of the sweep presets shipped with tune_jobs."""
    from tune_jobs.presets import preset_names

    return preset_names()


def sweep_args(
    target: str,
    storage: str | None = None,
    name: str | None = None,
    num_samples: int | None = None,
    working_dir: Path = Path(),
) -> list[str]:
    """The entrypoint's argv: a preset name, or a config file inside the working dir (made relative to it)."""
    path = Path(target)
    if path.is_file():
        try:
            target = path.resolve().relative_to(working_dir.resolve()).as_posix()
        except ValueError:
            raise ClusterError(
                f"{target}: a config file must lie inside the working dir {working_dir}"
            ) from None
    elif target not in (presets := known_presets()):
        raise ClusterError(f"{target}: neither a config file nor a preset (presets: {', '.join(presets)})")
    args = [*SWEEP_COMMAND, target]
    for flag, value in (("--storage", storage), ("--name", name), ("--num-samples", num_samples)):
        if value is not None:
            args += [flag, str(value)]
    return args


def ray_job_submit_line(args: Sequence[str], address: str = DEFAULT_ADDRESS) -> str:
    """The equivalent `ray job submit` command line, run from the repository root."""
    return (
        f"RAY_AUTH_MODE=token ray job submit --address {shlex.quote(address)} --working-dir . "
        f"--runtime-env {RUNTIME_ENV_ARG} -- {shlex.join(args)}"
    )


def runtime_env(working_dir: Path) -> dict[str, Any]:
    """The job's runtime env: cluster/runtime_env.yaml with the working dir filled in."""
    env = yaml.safe_load(RUNTIME_ENV_FILE.read_text())
    env["working_dir"] = str(working_dir.resolve())
    return env


def submit(
    client: Any,
    args: Sequence[str],
    working_dir: Path = Path(),
    submission_id: str | None = None,
) -> str:
    """Submit the sweep entrypoint with the runtime env; returns the submission id."""
    return client.submit_job(
        entrypoint=shlex.join(args),
        runtime_env=runtime_env(working_dir),
        submission_id=submission_id,
    )


def wait(client: Any, job_id: str, timeout_s: float = 60.0, poll_s: float = 0.5) -> str:
    """Poll until the job reaches a terminal status (or the timeout); returns the last status seen."""
    deadline = time.monotonic() + timeout_s
    status = str(client.get_job_status(job_id))
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(poll_s)
        status = str(client.get_job_status(job_id))
    return status


def follow(client: Any, job_id: str, out: TextIO | None = None) -> str:
    """Stream the job's logs (to `out`, default stdout) until it ends; returns its final status."""
    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    return wait(client, job_id)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignmixup-cluster", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--address", help=f"job server (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, {DEFAULT_ADDRESS})"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("submit", help="submit a sweep (preset name or config file) and follow its logs")
    run.add_argument("target", help="preset name, or a sweep config file inside the working dir")
    run.add_argument(
        "--storage",
        default=os.environ.get("ALIGNMIXUP_STORAGE"),
        help="s3:// or gs:// URI, or a path every node sees (default: $ALIGNMIXUP_STORAGE)",
    )
    run.add_argument("--name", help="experiment name")
    run.add_argument("--num-samples", type=int, help="override the sweep's number of trials")
    run.add_argument("--working-dir", type=Path, default=Path(), help="directory uploaded with the job (.)")
    run.add_argument("--submission-id", help="job id to use (default: Ray makes one)")
    run.add_argument("--no-wait", action="store_true", help="print the job id and return")
    run.add_argument("--dry-run", action="store_true", help="print the equivalent `ray job submit` line only")
    for command, text in (("status", "show a job's status"), ("stop", "stop a job and wait until it ends")):
        sub.add_parser(command, help=text).add_argument("job_id")
    logs = sub.add_parser("logs", help="print a job's logs")
    logs.add_argument("job_id")
    logs.add_argument("--follow", "-f", action="store_true", help="keep streaming until the job ends")
    sub.add_parser("list", help="list the cluster's jobs")
    return parser


def _run(ns: argparse.Namespace) -> int:
    if ns.command == "submit":
        args = sweep_args(ns.target, ns.storage, ns.name, ns.num_samples, ns.working_dir)
        if ns.dry_run:
            print(ray_job_submit_line(args, resolve_address(ns.address)))
            return 0
        client = connect(ns.address)
        job_id = submit(client, args, ns.working_dir, ns.submission_id)
        print(f"submitted {job_id}", flush=True)
        if ns.no_wait:
            return 0
        status = follow(client, job_id)
        print(f"job {job_id}: {status}")
        return 0 if status == "SUCCEEDED" else 1
    client = connect(ns.address)
    if ns.command == "list":
        for job in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
            print(f"{job.submission_id}\t{job.status}\t{job.entrypoint}")
    elif ns.command == "status":
        info = client.get_job_info(ns.job_id)
        print(f"{ns.job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    elif ns.command == "logs":
        if ns.follow:
            follow(client, ns.job_id)
        else:
            print(client.get_job_logs(ns.job_id), end="")
    else:  # stop
        client.stop_job(ns.job_id)
        status = wait(client, ns.job_id)
        print(f"{ns.job_id}: {status}")
        return 0 if status in TERMINAL else 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; errors print one line and return 1."""
    ns = _parser().parse_args(argv)
    try:
        return _run(ns)
    except (ClusterError, RuntimeError, OSError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
