"""The scheduler settings of a sweep (sweep.json's `scheduler`), with defaults for what it does not say."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SchedulerSettings:
    """ASHA's settings: the metric it compares, its mode, and its rung spacing."""

    metric: str = "val_acc"
    mode: str = "max"
    max_t: int | None = None
    grace_period: int | None = None
    reduction_factor: float | None = None


def scheduler_settings(sweep: dict[str, Any]) -> SchedulerSettings:
    """Read the scheduler settings from a sweep config's `scheduler` section (FIFO has no rungs)."""
    section = sweep.get("scheduler") or {}
    fields = SchedulerSettings.__dataclass_fields__
    return SchedulerSettings(**{k: section[k] for k in fields if section.get(k) is not None})
