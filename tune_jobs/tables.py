"""The tables a sweep leaves in its experiment directory, written at the end of a run (or resume).

trials.parquet / trials.csv: one row per trial; epochs.parquet: one row per reported epoch; sweep.json: the
validated sweep. What their columns mean and how they are computed is tune_jobs.schema (shared with the
analysis); here they are written, atomically, locally or under a URI such as s3://bucket/sweeps/name.
"""

from __future__ import annotations

import json

import pandas as pd

from tune_jobs import storage
from tune_jobs.config import SweepConfig, validate
from tune_jobs.schema import EPOCHS_TABLE, SWEEP_FILE, TRIALS_CSV, TRIALS_TABLE


def write_sweep(experiment: str, sweep: SweepConfig) -> str:
    """Save the validated sweep (what resume and the analysis read back)."""
    return storage.write_text(storage.join(experiment, SWEEP_FILE), json.dumps(sweep.model_dump(mode="json"),
                                                                                indent=2))


def read_sweep(experiment: str) -> SweepConfig:
    """The sweep saved in an experiment directory."""
    return validate(storage.read_json(storage.join(experiment, SWEEP_FILE)))


def write_tables(experiment: str, trials: pd.DataFrame, epochs: pd.DataFrame, sweep: SweepConfig) -> dict[str, str]:
    """Write trials.parquet, trials.csv, epochs.parquet and sweep.json; returns where each went."""
    at = lambda name: storage.join(experiment, name)
    return {
        TRIALS_TABLE: storage.write(at(TRIALS_TABLE), lambda fh: trials.to_parquet(fh, index=False)),
        TRIALS_CSV: storage.write_text(at(TRIALS_CSV), trials.to_csv(index=False)),
        EPOCHS_TABLE: storage.write(at(EPOCHS_TABLE), lambda fh: epochs.to_parquet(fh, index=False)),
        SWEEP_FILE: write_sweep(experiment, sweep),
    }
