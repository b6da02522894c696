"""Load a sweep's experiment directory into an Experiment: its tables (or Ray's own files), scheduler and objectives.

A finished sweep leaves trials.parquet, epochs.parquet and (under ASHA) decisions.parquet beside sweep.json. A
sweep still running, cut off, or copied without its tables has only Ray Tune's files: each trial folder's
result.json (the rows it reported) and params.json (what Tune sampled), the statuses in Tune's experiment state;
they go through tune_jobs.schema's `trials_frame` and `epochs_frame`, the very functions the sweep writes its
tables with. Import-light: pandas and pyarrow, never torch or Ray (except `reproduce_command`, on demand).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileType

from tune_jobs import storage
from tune_jobs.schema import (
    DECISIONS_TABLE,
    DONOR_COLUMNS,
    EPOCHS_TABLE,
    HP_PREFIX,
    RESULT_FILE,
    SWEEP_FILE,
    TRIALS_TABLE,
    UNFINISHED,
    TrialRecord,
    config_id,
    epochs_frame,
    experiment_statuses,
    read_rows,
    trials_frame,
)

PARAMS_FILE = "params.json"  # Ray Tune's per-trial record of the values it sampled
ERROR_FILE = "error.txt"  # Ray Tune's per-trial record of the exception that ended it
COUNTED = "TERMINATED"  # the status of a trial whose results enter statistics: it ran to max_t or was stopped
POPULATION_BASED = frozenset({"pbt", "pb2"})  # schedulers that exploit and explore instead of stopping trials
DONOR, DONOR_EPOCH = DONOR_COLUMNS
DEFAULT_RUNS = Path("runs") / "tune"  # where alignmixup-tune puts sweeps by default (SweepConfig.storage)


class ExperimentError(ValueError):
    """A location that is not a readable experiment directory (one-line message naming it)."""


@dataclass(frozen=True)
class SchedulerSettings:
    """The scheduler of a sweep: its kind, the metric it compares and its mode, and (ASHA) its rung spacing."""

    kind: str = "fifo"
    metric: str = "val_acc"
    mode: str = "max"
    max_t: int | None = None
    grace_period: int | None = None
    reduction_factor: float | None = None

    @property
    def has_rungs(self) -> bool:
        """Whether the scheduler is ASHA with its rung spacing known (it stops trials at rungs)."""
        return self.kind == "asha" and None not in (self.max_t, self.grace_period, self.reduction_factor)

    @property
    def population_based(self) -> bool:
        """Whether trials exploit each other's checkpoints and explore new hyperparameters (PBT, PB2)."""
        return self.kind in POPULATION_BASED


def scheduler_settings(sweep: dict[str, Any]) -> SchedulerSettings:
    """The settings in sweep.json's `scheduler` section, defaults for what it does not say."""
    section = sweep.get("scheduler") or {}
    fields = SchedulerSettings.__dataclass_fields__
    return SchedulerSettings(**{k: section[k] for k in fields if section.get(k) is not None})


@dataclass(frozen=True)
class Objective:
    """One objective of a multi-objective sweep: a reported metric and whether higher (max) or lower is better."""

    metric: str
    mode: str

    @property
    def sign(self) -> float:
        """+1 for max, -1 for min: signed values are better when higher."""
        return 1.0 if self.mode == "max" else -1.0


def objectives(sweep: dict[str, Any]) -> list[Objective]:
    """sweep.json's `objectives` (two or more {metric, mode}); [] for a single-objective sweep."""
    raw = sweep.get("objectives")
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) < 2:
        raise ExperimentError(f"{SWEEP_FILE}: objectives: expected a list of 2 or more {{metric, mode}} (got {raw!r})")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("metric"), str) or item.get("mode") not in (
            "max",
            "min",
        ):
            raise ExperimentError(
                f"{SWEEP_FILE}: objectives[{i}]: expected {{metric: <name>, mode: max|min}} (got {item!r})"
            )
        out.append(Objective(item["metric"], item["mode"]))
    return out


@dataclass(frozen=True)
class Experiment:
    """One sweep's results: a row per trial, a row per trial and reported epoch, the sweep, ASHA's decisions.

    `epochs` keeps each trial's rows in the order they were reported (a population-based trial that restored an
    earlier checkpoint reports an epoch again; the later row is the one in force).
    """

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
    def hp_columns(self) -> list[str]:
        """The searched hyperparameters' column names (hp_<name>)."""
        return [HP_PREFIX + name for name in self.hyperparameters]

    @property
    def scheduler(self) -> SchedulerSettings:
        """The scheduler's settings from sweep.json, max_t falling back to the trials' own."""
        settings = scheduler_settings(self.sweep)
        if settings.max_t is None and "max_t" in self.trials and self.trials["max_t"].notna().any():
            return replace(settings, max_t=int(self.trials["max_t"].max()))
        return settings

    @property
    def objectives(self) -> list[Objective]:
        """The sweep's objectives (sweep.json `objectives`); [] for a single-objective sweep."""
        return objectives(self.sweep)

    @property
    def finished(self) -> pd.Series:
        """Per trial (aligned with `trials`): whether it trained all max_t epochs."""
        return self.trials["epochs"] >= self.trials["max_t"]

    @property
    def counted(self) -> pd.Series:
        """Per trial: whether its results enter statistics (status TERMINATED: ran to max_t or was stopped early).

        Trials still running (RUNNING, PENDING, PAUSED) are left out because their numbers will still change,
        and errored ones because their training failed; the tables list them with their status.
        """
        return self.trials["status"] == COUNTED

    @property
    def running(self) -> pd.Series:
        """Per trial: whether it has not ended yet (RUNNING, PENDING or PAUSED)."""
        return self.trials["status"].isin(UNFINISHED)

    @property
    def outcome(self) -> pd.Series:
        """Per trial: "finished" (ran max_t epochs), "stopped early" (by the scheduler), "running", "error", or
        "ended early" (ended before max_t without a scheduler's stop)."""
        trials = self.trials
        out = pd.Series("ended early", index=trials.index)
        out[trials["stopped_early"].astype(bool)] = "stopped early"
        out[self.finished] = "finished"
        out[trials["status"] == "ERROR"] = "error"
        out[self.running] = "running"
        return out

    @property
    def unit(self) -> str:
        """The column whose equal values make one configuration: config_id (its seeds are repeated measurements),
        or trial_id under population-based training (trials copy each other's checkpoints and hyperparameters
        during training, so a trial's schedule is its own)."""
        return "trial_id" if self.scheduler.population_based else "config_id"

    def config_labels(self) -> dict[str, str]:
        """Each configuration (by `unit`) as text: its searched hyperparameters, e.g. "alpha=1.2 eps=0.05
        mix_layers=0,4"; under population-based training the trial and its final values."""
        columns, unit = self.hp_columns, self.unit
        first = self.trials.drop_duplicates(unit).set_index(unit)
        prefix = "{key}: final " if unit == "trial_id" else ""
        return {
            key: prefix.format(key=key) + " ".join(f"{c.removeprefix(HP_PREFIX)}={value_text(row[c])}" for c in columns)
            for key, row in first.iterrows()
        }


def value_text(value: object) -> str:
    """A hyperparameter value as short text: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------------- reading


def _status(trial_dir: str, rows: list[dict[str, Any]], max_t: int | None) -> str:
    """A trial's status when Tune's experiment state does not list it: from its folder alone. Tune marks a result
    `done` when a scheduler stops the trial, not when the trainable returns after its last epoch, so a trial that
    reported max_t epochs has finished too."""
    if storage.is_file(storage.join(trial_dir, ERROR_FILE)):
        return "ERROR"
    if rows and (rows[-1].get("done") or (max_t is not None and int(rows[-1].get("epoch", 0)) >= max_t)):
        return "TERMINATED"
    return "RUNNING"


def read_records(root: str, max_t: int | None = None) -> list[TrialRecord]:
    """Every trial folder of the experiment at `root` that holds a result.json, as a TrialRecord (max_t: the
    sweep's, to tell a finished trial from a running one when Tune's experiment state is missing)."""
    statuses = experiment_statuses(root)
    records = []
    for info in storage.children(root):
        if info.type != FileType.Directory or not storage.is_file(storage.join(info.path, RESULT_FILE)):
            continue
        rows = read_rows(info.path)
        params = storage.join(info.path, PARAMS_FILE)
        config = storage.read_json(params) if storage.is_file(params) else (rows[0].get("config", {}) if rows else {})
        trial_id = rows[0]["trial_id"] if rows else info.base_name.removeprefix("trial_")
        records.append(TrialRecord(trial_id, statuses.get(trial_id) or _status(info.path, rows, max_t), config, rows))
    return records


def read_ray_results(root: str, sweep: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (trials, epochs) tables of the experiment at `root`, from its trial folders and sweep.json."""
    records = read_records(root, scheduler_settings(sweep).max_t)
    return trials_frame(records, sweep), epochs_frame(records)


def _table(root: str, name: str) -> pd.DataFrame | None:
    """A parquet table of the experiment, or None when it is not there."""
    location = storage.join(root, name)
    if not storage.is_file(location):
        return None
    fs, path = storage.resolve(location)
    return pq.read_table(path, filesystem=fs).to_pandas()


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value (JSON-ready)."""
    return value.item() if hasattr(value, "item") else value


def _with_config_ids(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials of an experiment written before config ids get one from their hyperparameter columns."""
    if "config_id" in trials and trials["config_id"].notna().all():
        return trials
    columns = [c for c in trials.columns if c.startswith(HP_PREFIX)]
    derived = [config_id({c.removeprefix(HP_PREFIX): _plain(row[c]) for c in columns}) for _, row in trials.iterrows()]
    given = trials["config_id"] if "config_id" in trials else pd.Series([None] * len(trials), index=trials.index)
    return trials.assign(config_id=given.where(given.notna(), pd.Series(derived, index=trials.index)))


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
    objectives(sweep)  # a malformed objectives list is reported now, in one line
    trials, epochs = _table(root, TRIALS_TABLE), _table(root, EPOCHS_TABLE)
    if trials is None or epochs is None:  # still running, cut off, or copied without its tables
        trials, epochs = read_ray_results(root, sweep)
    if trials.empty:
        raise ExperimentError(f"{location}: no trial has reported yet (no {TRIALS_TABLE}, no Ray trial results)")
    decisions = _table(root, DECISIONS_TABLE)
    epochs = epochs.sort_values("trial_id", ignore_index=True, kind="stable")  # each trial's rows in report order
    return Experiment(str(location), _with_config_ids(trials).reset_index(drop=True), epochs, sweep, decisions)


def load(location: str | Path) -> Experiment:
    """Read an experiment directory (local path or URI); ExperimentError (one line) if it is not one."""
    try:
        return _read(location)
    except (OSError, pa.ArrowException, json.JSONDecodeError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExperimentError(f"{location}: cannot read ({type(exc).__name__}: {reason})") from None


def find_experiment(start: str | Path | None = None) -> Path:
    """The newest sweep (by its sweep.json's time) under runs/tune in `start` (default: the working directory) or
    the nearest of its parents that has one; ExperimentError naming where it looked if there is none."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        found = sorted((folder / DEFAULT_RUNS).glob(f"*/{SWEEP_FILE}"), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1].parent
    raise ExperimentError(f"no experiment found: no {DEFAULT_RUNS}/*/{SWEEP_FILE} in {here} or its parents; name "
                          "one (ALIGNMIXUP_EXPERIMENT, or the notebook's EXPERIMENT parameter)")


# ----------------------------------------------------------------------------------- reproducing a trial


def reproduce_command(experiment: Experiment, trial_id: str) -> list[str]:
    """The `alignmixup-train` command line that retrains trial `trial_id` alone: the sweep's TrainConfig for the
    trial's hyperparameters and repeat (tune_jobs.config.trial_settings), checked against the trial's recorded
    configuration id and seed. Imports the trainer's packages (torch), so call it only when needed.

    ValueError for a population-based trial (its hyperparameters change during training: no single command) or
    a trial the sweep would not rebuild as recorded; ConfigError if sweep.json does not validate.
    """
    from alignmixup.cli import command_line
    from tune_jobs.config import trial_settings, validate

    if experiment.scheduler.population_based:
        raise ValueError(f"{trial_id}: a {experiment.scheduler.kind} trial's hyperparameters change during training;"
                         " no single alignmixup-train command retrains it")
    row = experiment.trials.set_index("trial_id").loc[trial_id]
    sampled = {name: _plain(row[HP_PREFIX + name]) for name in experiment.hyperparameters}
    repeat = row.get("repeat")
    cfg, identity = trial_settings(validate(experiment.sweep), sampled, 0 if pd.isna(repeat) else int(repeat))
    for key in ("config_id", "seed"):
        recorded = row.get(key)
        if recorded is not None and not (isinstance(recorded, float) and math.isnan(recorded)) and (
            _plain(recorded) != identity[key]
        ):
            raise ValueError(f"{trial_id}: the sweep rebuilds {key} {identity[key]}, the trial recorded {recorded}")
    return ["alignmixup-train", *command_line(cfg)]
