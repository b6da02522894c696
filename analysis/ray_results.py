"""Rebuild the trials and epochs tables from Ray Tune's own files, with the sweep's own definitions.

For an experiment without its tables (a sweep still running, cut off, or copied without them): each trial
folder's result.json (the rows it reported) and params.json (what Tune sampled), the statuses in Tune's
experiment state, and sweep.json go through tune_jobs.schema's `trials_frame` and `epochs_frame`, the very
functions the sweep writes its tables with.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tune_jobs import storage
from tune_jobs.schema import RESULT_FILE, TrialRecord, epochs_frame, experiment_statuses, read_rows, trials_frame

PARAMS_FILE = "params.json"  # Ray Tune's per-trial record of the values it sampled
ERROR_FILE = "error.txt"  # Ray Tune's per-trial record of the exception that ended it


def _status(trial_dir: str, rows: list[dict[str, Any]]) -> str:
    """A trial's status when Tune's experiment state does not list it: from its folder alone."""
    if storage.is_file(storage.join(trial_dir, ERROR_FILE)):
        return "ERROR"
    return "TERMINATED" if rows and rows[-1].get("done") else "RUNNING"


def read_records(root: str) -> list[TrialRecord]:
    """Every trial folder of the experiment at `root` that holds a result.json, as a TrialRecord."""
    statuses = experiment_statuses(root)
    records = []
    for info in storage.children(root):
        if info.type.name != "Directory" or not storage.is_file(storage.join(info.path, RESULT_FILE)):
            continue
        rows = read_rows(info.path)
        params = storage.join(info.path, PARAMS_FILE)
        config = storage.read_json(params) if storage.is_file(params) else (rows[0].get("config", {}) if rows else {})
        trial_id = rows[0]["trial_id"] if rows else info.base_name.removeprefix("trial_")
        records.append(TrialRecord(trial_id, statuses.get(trial_id) or _status(info.path, rows), config, rows))
    return records


def read_ray_results(root: str, sweep: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (trials, epochs) tables of the experiment at `root`, from its trial folders and sweep.json."""
    records = read_records(root)
    return trials_frame(records, sweep), epochs_frame(records)
