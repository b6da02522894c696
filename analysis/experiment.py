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
from analysis.schema import EPOCHS_TABLE, HP_PREFIX, SWEEP_FILE, TRIALS_TABLE
from analysis.storage import is_file, read_json, resolve
from analysis.sweep import SchedulerSettings, scheduler_settings


class ExperimentError(ValueError):
    """A location that is not a readable experiment directory (one-line message naming it)."""


@dataclass(frozen=True)
class Experiment:
    """One sweep's results: a row per trial, a row per trial and epoch, and the sweep config."""

    location: str
    trials: pd.DataFrame
    epochs: pd.DataFrame
    sweep: dict[str, Any]

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


def _read(location: str | Path) -> Experiment:
    """Read the experiment at `location`, raising ExperimentError when it is not one."""
    fs, root = resolve(location)
    kind = fs.get_file_info(root).type
    if kind != FileType.Directory:
        raise ExperimentError(
            f"{location}: " + ("no such directory" if kind == FileType.NotFound else "not a directory")
        )
    sweep = read_json(fs, f"{root}/{SWEEP_FILE}") if is_file(fs, f"{root}/{SWEEP_FILE}") else {}
    if is_file(fs, f"{root}/{TRIALS_TABLE}") and is_file(fs, f"{root}/{EPOCHS_TABLE}"):
        trials = pq.read_table(f"{root}/{TRIALS_TABLE}", filesystem=fs).to_pandas()
        epochs = pq.read_table(f"{root}/{EPOCHS_TABLE}", filesystem=fs).to_pandas()
    else:
        trials, epochs = read_ray_results(fs, root, sweep)
    if trials.empty:
        raise ExperimentError(
            f"{location}: not an experiment directory (no {TRIALS_TABLE} and {EPOCHS_TABLE}, "
            "no Ray trial results)"
        )
    epochs = epochs.sort_values(["trial_id", "epoch"], ignore_index=True)
    return Experiment(str(location), trials.reset_index(drop=True), epochs, sweep)


def load(location: str | Path) -> Experiment:
    """Read an experiment directory (local path or URI); ExperimentError (one line) if it is not one."""
    try:
        return _read(location)
    except (OSError, pa.ArrowException, json.JSONDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExperimentError(f"{location}: cannot read ({reason})") from None
