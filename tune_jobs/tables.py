"""The tables a sweep leaves in its experiment directory (notes/contract.md), built without Ray.

trials.parquet / trials.csv: one row per trial; epochs.parquet: one row per reported epoch;
sweep.json: the validated sweep. Files are written atomically (local: temporary file + rename;
object stores: one PUT), locally or under a URI such as s3://bucket/sweeps/name.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs

from alignmixup.checkpoint import atomic_write
from alignmixup.trainer import EpochMetrics
from tune_jobs.config import URI, SweepConfig, hyperparameter_values, validate
from tune_jobs.layout import EPOCHS_TABLE, HP_PREFIX, SWEEP_FILE, TRIALS_CSV, TRIALS_TABLE

WORKER_EXTRAS = ("train_samples_by_rank", "pid_by_rank", "reported_at")  # added to EpochMetrics by tune_jobs.worker
EPOCH_COLUMNS = ("trial_id", *(f.name for f in fields(EpochMetrics)), *WORKER_EXTRAS, "time_total_s")
TRIAL_COLUMNS = (
    "trial_id", "status", "epochs", "stopped_early", "best_val_acc", "last_val_acc", "test_acc",
    "wall_time_s", "device_hours", "device", "num_workers", "max_t", "dataset", "network", "width",
)


@dataclass(frozen=True)
class TrialRecord:
    """What Tune knows of one trial: id, final status, sampled hyperparameters, reported rows in order."""

    trial_id: str
    status: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]


def wall_time(rows: list[dict[str, Any]]) -> float:
    """Seconds the trial ran: Tune's time_total_s, summed over runs where a restart reset it."""
    total = last = 0.0
    for row in rows:
        t = float(row["time_total_s"])
        if t < last:
            total += last
        last = t
    return total + last


def epochs_frame(records: list[TrialRecord]) -> pd.DataFrame:
    """One row per trial per reported epoch, in report order."""
    rows = [{"trial_id": r.trial_id, **{k: row.get(k) for k in EPOCH_COLUMNS[1:]}} for r in records for row in r.rows]
    return pd.DataFrame(rows, columns=list(EPOCH_COLUMNS)).astype({"trial_id": str, "epoch": "int64"})


def trial_row(record: TrialRecord, sweep: SweepConfig) -> dict[str, Any]:
    """The trials-table row of one trial."""
    cfg = sweep.trial_config(record.config)
    rows = record.rows
    epochs = max((int(row["epoch"]) for row in rows), default=0)
    accs = [row["val_acc"] for row in rows]
    final = rows[-1] if rows else {}
    seconds = wall_time(rows)
    max_t = sweep.scheduler.max_t
    test = final.get("best_val_test_acc")
    return {
        "trial_id": record.trial_id,
        "status": record.status,
        **{f"{HP_PREFIX}{name}": value for name, value in hyperparameter_values(cfg).items()},
        "epochs": epochs,
        "stopped_early": sweep.scheduler.kind == "asha" and record.status == "TERMINATED" and epochs < max_t,
        "best_val_acc": max(accs, default=math.nan),
        "last_val_acc": accs[-1] if accs else math.nan,
        "test_acc": math.nan if test is None else float(test),
        "wall_time_s": seconds,
        "device_hours": seconds / 3600 * sweep.scaling.devices,
        "device": "gpu" if sweep.scaling.use_gpu else "cpu",
        "num_workers": sweep.scaling.num_workers,
        "max_t": max_t,
        "dataset": cfg.dataset,
        "network": cfg.network,
        "width": cfg.width,
    }


def trials_frame(records: list[TrialRecord], sweep: SweepConfig) -> pd.DataFrame:
    """One row per trial, hyperparameters as hp_<name> columns right after the status."""
    frame = pd.DataFrame([trial_row(r, sweep) for r in records])
    hp = [c for c in frame.columns if c.startswith(HP_PREFIX)]
    return frame[[*TRIAL_COLUMNS[:2], *hp, *TRIAL_COLUMNS[2:]]]


# ----------------------------------------------------------------------------------- files


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def write_file(experiment: str, name: str, write: Callable[[io.BufferedIOBase], Any]) -> str:
    """Write experiment/name atomically through write(binary file); returns its path or URI."""
    target = _join(experiment, name)
    if URI.match(experiment):
        fs, path = pyarrow.fs.FileSystem.from_uri(target)
        buffer = io.BytesIO()
        write(buffer)
        with fs.open_output_stream(path) as out:  # an object store PUT is atomic
            out.write(buffer.getvalue())
    else:
        atomic_write(Path(target), write)
    return target


def read_text(experiment: str, name: str) -> str:
    """Text of experiment/name (a local path or URI)."""
    fs, path = pyarrow.fs.FileSystem.from_uri(_join(experiment, name))
    with fs.open_input_stream(path) as fh:
        return fh.read().decode()


def read_rows(trial_path: str) -> list[dict[str, Any]]:
    """The results Tune logged for a trial (its result.json, one JSON object per line)."""
    fs, path = pyarrow.fs.FileSystem.from_uri(_join(trial_path, "result.json"))
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return []
    with fs.open_input_stream(path) as fh:
        return [json.loads(line) for line in fh.read().decode().splitlines() if line.strip()]


def write_sweep(experiment: str, sweep: SweepConfig) -> str:
    """Save the validated sweep (what resume and analysis read back)."""
    text = json.dumps(sweep.model_dump(mode="json"), indent=2)
    return write_file(experiment, SWEEP_FILE, lambda fh: fh.write(text.encode()))


def read_sweep(experiment: str) -> SweepConfig:
    """The sweep saved in an experiment directory."""
    return validate(json.loads(read_text(experiment, SWEEP_FILE)))


def write_tables(experiment: str, trials: pd.DataFrame, epochs: pd.DataFrame, sweep: SweepConfig) -> dict[str, str]:
    """Write trials.parquet, trials.csv, epochs.parquet and sweep.json; returns where each went."""
    return {
        TRIALS_TABLE: write_file(experiment, TRIALS_TABLE, lambda fh: trials.to_parquet(fh, index=False)),
        TRIALS_CSV: write_file(experiment, TRIALS_CSV, lambda fh: fh.write(trials.to_csv(index=False).encode())),
        EPOCHS_TABLE: write_file(experiment, EPOCHS_TABLE, lambda fh: epochs.to_parquet(fh, index=False)),
        SWEEP_FILE: write_sweep(experiment, sweep),
    }
