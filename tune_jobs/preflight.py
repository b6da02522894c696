"""Checks a sweep must pass before any cluster work starts; each failure is one ConfigError naming the key."""

from __future__ import annotations

from alignmixup.console import ConfigError
from tune_jobs import storage
from tune_jobs.config import SweepConfig


def check_storage(sweep: SweepConfig, probe_uri: bool = False) -> None:
    """Multi-node trials need storage every node sees (a URI); a local storage path must be writable.

    probe_uri: also write and delete a probe object under a URI (credentials, bucket), as a dry run does.
    """
    location = sweep.storage
    if storage.is_uri(location):
        if location.startswith("file://"):
            raise ConfigError(f"storage: give a local directory as a plain path (got {location})")
        if not probe_uri:
            return
    elif sweep.scaling.multi_node:
        raise ConfigError(
            f"storage: a multi-node trial needs storage every node sees; give a URI such as "
            f"s3://bucket/sweeps or gs://bucket/sweeps (got the local path {location})"
        )
    try:
        storage.check_writable(location)
    except OSError as exc:
        raise ConfigError(f"storage: cannot write to {location} ({getattr(exc, 'strerror', None) or exc})") from None
