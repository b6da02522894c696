"""Load a sweep's tables (or Ray's own per-trial result files) into an Experiment."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileType

from analysis.ray_results import read_ray_results
from analysis.sweep import SchedulerSettings, scheduler_settings
from tune_jobs import storage
from tune_jobs.schema import DECISIONS_TABLE, EPOCHS_TABLE, HP_PREFIX, SWEEP_FILE, TRIALS_TABLE


class ExperimentError(ValueError):
    """A location that is not a readable experiment directory (one-line message naming it)."""


@dataclass(frozen=True)
class Experiment:
    """One sweep's results: a row per trial, a row per trial and epoch, and the sweep config."""

    location: str
    trials: pd.DataFrame
    epochs: pd.DataFrame
    sweep: dict[str, Any]
    decisions: pd.DataFrame | None = None  # the scheduler's recorded decisions (decisions.parquet), when kept

    @property
    def name(self) -> str:
        """The experiment directory's base name."""
        return self.location.rstrip("/").rsplit("/", 1)[-1]

    @property
    def hyperparameters(self) -> list[str]:
        """The `hp_<name>` columns that sweep.json searches over (all of them if it does not say)."""
        names = [c.removeprefix(HP_PREFIX) for c in self.trials.columns if c.startswith(HP_PREFIX)]
        search = self.sweep.get("search")
        return [n for n in names if isinstance(search.get(n), dict)] if isinstance(search, dict) else names

    @property
    def finished(self) -> pd.Series:
        """Per trial (aligned with `trials`): whether it trained all max_t epochs."""
        return self.trials["epochs"] >= self.trials["max_t"]

    @property
    def scheduler(self) -> SchedulerSettings:
        """ASHA's settings from sweep.json, max_t falling back to the trials' own."""
        settings = scheduler_settings(self.sweep)
        if settings.max_t is None and "max_t" in self.trials:
            return SchedulerSettings(**{**vars(settings), "max_t": int(self.trials["max_t"].max())})
        return settings


def _table(root: str, name: str) -> pd.DataFrame | None:
    """A parquet table of the experiment, or None when it is not there."""
    location = storage.join(root, name)
    if not storage.is_file(location):
        return None
    fs, path = storage.resolve(location)
    return pq.read_table(path, filesystem=fs).to_pandas()


def _read(location: str | Path) -> Experiment:
    """Read the experiment at `location`, raising ExperimentError when it is not one."""
    root = storage.absolute(location)
    kind = storage.file_type(root)
    if kind != FileType.Directory:
        raise ExperimentError(
            f"{location}: " + ("no such directory" if kind == FileType.NotFound else "not a directory")
        )
    if not storage.is_file(storage.join(root, SWEEP_FILE)):
        raise ExperimentError(f"{location}: not an experiment directory (no {SWEEP_FILE}; alignmixup-tune run makes "
                              "one)")
    sweep = storage.read_json(storage.join(root, SWEEP_FILE))
    trials, epochs = _table(root, TRIALS_TABLE), _table(root, EPOCHS_TABLE)
    if trials is None or epochs is None:  # still running, cut off, or copied without its tables
        trials, epochs = read_ray_results(root, sweep)
    if trials.empty:
        raise ExperimentError(f"{location}: no trial has reported yet (no {TRIALS_TABLE}, no Ray trial results)")
    decisions = _table(root, DECISIONS_TABLE)
    epochs = epochs.sort_values(["trial_id", "epoch"], ignore_index=True, kind="stable")
    return Experiment(str(location), trials.reset_index(drop=True), epochs, sweep, decisions)


def load(location: str | Path) -> Experiment:
    """Read an experiment directory (local path or URI); ExperimentError (one line) if it is not one."""
    try:
        return _read(location)
    except (OSError, pa.ArrowException, json.JSONDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExperimentError(f"{location}: cannot read ({reason})") from None
