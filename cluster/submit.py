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

from alignmixup.console import ConfigError, Parser, add_version, run_command

PROG = "alignmixup-cluster"
EXIT_FAILED = 1  # the job FAILED, or the cluster could not be reached
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
RUNTIME_ENV_FILE = Path(__file__).with_name("runtime_env.yaml")
RUNTIME_ENV_ARG = "cluster/runtime_env.yaml"  # the same file, as named from the repository root
SWEEP_COMMAND = ("python", "-m", "tune_jobs", "run")
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


class ClusterError(ConfigError):
    """Bad input to a submission (a target, a token setting): one line, exit code 2."""


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
    dry_run: bool = False,
) -> list[str]:
    """The entrypoint's argv: a preset name, or a config file inside the working dir (made relative to it);
    dry_run: the sweep's own dry run on the cluster (its resources, storage and data directories; trains nothing)."""
    path = Path(target)
    if path.is_file():
        try:
            target = path.resolve().relative_to(working_dir.resolve()).as_posix()
        except ValueError:
            raise ClusterError(
                f"target: {target} is outside the working dir {working_dir} (a config file must lie inside it)"
            ) from None
    elif target not in (presets := known_presets()):
        raise ClusterError(f"target: {target} is neither a config file nor a preset (presets: {', '.join(presets)})")
    args = [*SWEEP_COMMAND, target]
    for flag, value in (("--storage", storage), ("--name", name), ("--num-samples", num_samples)):
        if value is not None:
            args += [flag, str(value)]
    return [*args, "--dry-run"] if dry_run else args


def check_sweep(
    target: str, storage: str | None = None, name: str | None = None, num_samples: int | None = None
) -> list[str]:
    """Validate the sweep here, before anything is uploaded (ConfigError naming the key); returns what was checked.

    What depends on the cluster (its resources, the storage seen from its nodes, the data directories on them) is
    checked by the job itself, on the cluster, before any trial starts (`alignmixup-tune run`).
    """
    from tune_jobs import api, preflight

    overrides = {"storage": storage, "name": name, "num_samples": num_samples}  # as the job's command line sets them
    sweep = api.load_sweep(target, {k: v for k, v in overrides.items() if v is not None})
    if sweep.storage.startswith("file://"):
        raise ConfigError(f"storage: give a local directory as a plain path (got {sweep.storage})")
    checked = [f"{target}: a valid sweep"]
    estimate = preflight.check_packing(sweep)
    if estimate is not None:
        checked.append(preflight.memory_line(sweep, estimate))
    return checked


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


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = Parser(prog=PROG, description=__doc__)
    add_version(p)
    p.add_argument("--address", help=f"job server (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, {DEFAULT_ADDRESS})")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser("submit", help="check a sweep (preset name or config file) here, submit it, follow its logs")
    run.add_argument("target", help="preset name, or a sweep config file inside the working dir")
    run.add_argument(
        "--storage", default=os.environ.get("ALIGNMIXUP_STORAGE"),
        help="s3:// or gs:// URI, or a path every node sees (default: $ALIGNMIXUP_STORAGE here, else the sweep's, "
             "else $ALIGNMIXUP_STORAGE on the cluster)",
    )
    run.add_argument("--name", help="experiment name")
    run.add_argument("--num-samples", type=int, help="override the sweep's number of trials")
    run.add_argument("--working-dir", type=Path, default=Path(), help="directory uploaded with the job")
    run.add_argument("--submission-id", help="job id to use (default: Ray makes one)")
    run.add_argument("--no-wait", action="store_true", help="print the job id and return")
    run.add_argument("--dry-run", action="store_true",
                     help="check the sweep here and print the equivalent `ray job submit` line; submit nothing")
    for command, text in (("status", "show a job's status"), ("stop", "stop a job and wait until it ends")):
        sub.add_parser(command, help=text).add_argument("job_id")
    logs = sub.add_parser("logs", help="print a job's logs")
    logs.add_argument("job_id")
    logs.add_argument("--follow", "-f", action="store_true", help="keep streaming until the job ends")
    sub.add_parser("list", help="list the cluster's jobs")
    return p


def _submit(ns: argparse.Namespace) -> int:
    args = sweep_args(ns.target, ns.storage, ns.name, ns.num_samples, ns.working_dir)
    checked = check_sweep(ns.target, ns.storage, ns.name, ns.num_samples)  # before anything leaves this machine
    if ns.dry_run:
        for line in checked:
            print(f"checked here: {line}", file=sys.stderr)
        on_cluster = sweep_args(ns.target, ns.storage, ns.name, ns.num_samples, ns.working_dir, dry_run=True)
        print("checked by the job before any trial starts: the cluster's resources, the storage seen from its "
              f"nodes, their data directories; alone, with nothing trained:\n  "
              f"{ray_job_submit_line(on_cluster, resolve_address(ns.address))}", file=sys.stderr)
        print(ray_job_submit_line(args, resolve_address(ns.address)))
        return 0
    client = connect(ns.address)
    job_id = submit(client, args, ns.working_dir, ns.submission_id)
    print(f"submitted {job_id}", flush=True)
    if ns.no_wait:
        return 0
    status = follow(client, job_id)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else EXIT_FAILED


def _run(argv: Sequence[str] | None) -> int:
    ns = parser().parse_args(argv)
    try:
        if ns.command == "submit":
            return _submit(ns)
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
            return 0 if status in TERMINAL else EXIT_FAILED
        return 0
    except (RuntimeError, OSError) as exc:  # the cluster: unreachable, refused, or the job is unknown
        print(f"{PROG}: error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: bad input exits 2 with one line, a failed job or an unreachable cluster 1."""
    return run_command(PROG, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
