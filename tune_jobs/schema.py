"""What a sweep leaves in its experiment directory and how its tables are computed: one definition.

The sweep writes its tables at the end of a run (tune_jobs.tables) and the analysis rebuilds them from Ray's
own files when they are missing (analysis.ray_results); both call `trials_frame` and `epochs_frame` here, on
the rows each trial reported (its result.json) and the validated sweep (sweep.json). Import-light on purpose
(pandas only), so the analysis never needs torch or Ray to read an experiment.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from alignmixup.names import evaluation_keys
from tune_jobs import storage

TRIALS_TABLE = "trials.parquet"
TRIALS_CSV = "trials.csv"
EPOCHS_TABLE = "epochs.parquet"
DECISIONS_TABLE = "decisions.parquet"
SWEEP_FILE = "sweep.json"
SCHEDULER_STATE = "scheduler_state.json"  # the early-stopping scheduler's rungs, kept across interruptions
TRAIN_RUNS = "train_runs"  # <experiment>/train_runs/train-<trial_id>/checkpoint_*: each trial's Ray Train run
# <experiment>/best_weights/<trial_id>/<train run>-e<epoch>.safetensors: a trial's best-validation weights, a file
# per change (written at a checkpoint, before it); rows name the current one (BEST_WEIGHTS_FILE)
BEST_WEIGHTS = "best_weights"
RESULT_FILE = "result.json"  # Ray Tune's per-trial log of reported rows (one JSON object per line)
EXPERIMENT_STATE = "experiment_state-"  # Ray Tune's experiment state files: experiment_state-<time>.json
HP_PREFIX = "hp_"  # a hyperparameter's column, in every report and in the trials table: hp_<name>

# hyperparameter name -> its path inside alignmixup's TrainConfig
HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "alpha": ("alpha",),
    "mix_layers": ("mix_layers",),
    "eps": ("sinkhorn", "eps"),
    "cost_scaling": ("sinkhorn", "cost_scaling"),
    "method": ("method",),
    "lr": ("lr",),
    "weight_decay": ("weight_decay",),
}
# what every report says about its trial (constant over its epochs): in the trials table, not the epochs table
IDENTITY = ("config_id", "seed", "repeat", "dataset", "network", "width")
# what the Ray Train worker adds to the trainer's metrics in each report
REPORTED_AT = "reported_at"  # when the worker reported the row (orders reports across trials)
WORKER_EXTRAS = ("train_samples_by_rank", "pid_by_rank", REPORTED_AT)
# population-based sweeps: the trial whose checkpoint the current segment started from and that checkpoint's epoch
# (null while a trial continues its own checkpoints; set on the first epoch after an exploit, whose epoch is
# donor_epoch + 1). In every row of a PBT or PB2 sweep; a trial's epochs may repeat or jump across an exploit.
DONOR_COLUMNS = ("donor_trial_id", "donor_epoch")
# In every row: the file holding the trial's best-validation weights as of that epoch's checkpoint (null at an epoch
# without one). After an exploit it may be the donor's, until the trial improves on it.
BEST_WEIGHTS_FILE = "best_weights_file"
TRIAL_STATE = "by_trial"  # <experiment>/by_trial/<trial_id>.json: a trial's identity, the last epoch Tune logged
# Ray Tune's own keys in result.json that are not measurements (time_total_s is kept: the wall-time formula)
TUNE_BOOKKEEPING = frozenset({
    "config", "date", "hostname", "node_ip", "pid", "timestamp", "done", "checkpoint_dir_name", "time_since_restore",
    "iterations_since_restore", "training_iteration", "time_this_iter_s", "should_checkpoint", "trial_id",
    "experiment_tag",
})
# Tune's trial statuses: those of a trial that has not ended
UNFINISHED = frozenset({"PENDING", "RUNNING", "PAUSED"})
TRIAL_COLUMNS = (
    "trial_id", "status", "config_id", "seed", "repeat", "epochs", "stopped_early", "best_val_acc", "last_val_acc",
    "test_acc", "wall_time_s", "device_hours", "device", "num_workers", "max_t", "dataset", "network", "width",
)
DECISION_COLUMNS = ("trial_id", "epoch", "milestone", "metric", "value", "cutoff", "decision", "wall_time")


@dataclass(frozen=True)
class TrialRecord:
    """What is known of one trial: its id, its status, the values Tune sampled for it, its reported rows in order."""

    trial_id: str
    status: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]


# ----------------------------------------------------------------------------------- formulas


def layers_text(layers: Sequence[int]) -> str:
    """Mixing layers as the text used in search spaces and tables, e.g. [0, 4] -> "0,4"."""
    return ",".join(str(k) for k in layers)


def config_id(hyperparameters: Mapping[str, Any]) -> str:
    """A short id of a configuration: equal hyperparameter values (all of them, seeds aside) give equal ids."""
    text = json.dumps({k: hyperparameters[k] for k in sorted(hyperparameters)}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def trial_seed(sweep_seed: int, cfg_id: str, repeat: int) -> int:
    """The training seed of repeat `repeat` of configuration `cfg_id` in a sweep seeded `sweep_seed`.

    Reproducible (the same sweep seed, configuration and repeat give the same seed) and distinct across
    configurations and repeats, so no two trials of a sweep are copies of one draw.
    """
    state = np.random.SeedSequence([sweep_seed, int(cfg_id, 16), repeat]).generate_state(1)[0]
    return int(state) & 0x7FFFFFFF


def wall_time(rows: Sequence[Mapping[str, Any]]) -> float:
    """Seconds the trial ran: Tune's time_total_s, summed over runs where a restart reset it."""
    total = last = 0.0
    for row in rows:
        t = float(row["time_total_s"])
        if t < last:
            total += last
        last = t
    return total + last


def devices(scaling: Mapping[str, Any]) -> float:
    """Devices one trial occupies: its GPUs on a GPU run, its busy CPU threads (whole CPUs, >= 1 each) on a CPU run."""
    per_worker = scaling["gpus_per_worker"] if scaling["use_gpu"] else max(1, int(scaling["cpus_per_worker"]))
    return scaling["num_workers"] * per_worker


def milestones(grace_period: float, max_t: float, reduction_factor: float) -> list[float]:
    """ASHA's rung milestones, descending, placed as Ray's one-bracket AsyncHyperBandScheduler places them."""
    count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in reversed(range(count))]


def stopped_early(status: str, epochs: int, scheduler: Mapping[str, Any]) -> bool:
    """Whether the early-stopping scheduler ended the trial: it finished normally before max_t under ASHA."""
    return scheduler["kind"] == "asha" and status == "TERMINATED" and epochs < scheduler["max_t"]


# ----------------------------------------------------------------------------------- tables


def read_rows(trial_path: str) -> list[dict[str, Any]]:
    """The rows Tune logged for a trial (its result.json, one JSON object per line); [] if it reported nothing.

    A half-written last line (the trial was still reporting when the file was read) is left out with a warning
    that names the file.
    """
    location = storage.join(trial_path, RESULT_FILE)
    if not storage.is_file(location):
        return []
    lines = [line for line in storage.read_text(location).splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{location}: line {number} is not JSON") from None
            warnings.warn(f"{location}: its last line is incomplete (still being written?); left out", stacklevel=2)
    return rows


def experiment_statuses(experiment: str) -> dict[str, str]:
    """trial_id -> status, from Ray Tune's newest experiment state file; {} when there is none or it is unreadable.

    Tune rewrites the file every few seconds while it runs, so a running sweep's trials say RUNNING or PENDING.
    """
    states = [i.path for i in storage.children(experiment)
              if i.base_name.startswith(EXPERIMENT_STATE) and i.base_name.endswith(".json")]
    if not states:
        return {}
    try:
        saved = json.loads(storage.read_text(max(states)))
        return {state["trial_id"]: state["status"] for state in (json.loads(entry[0]) for entry in saved["trial_data"])}
    except (ValueError, KeyError, TypeError, IndexError):
        warnings.warn(f"{max(states)}: not a Ray Tune experiment state this version can read; trial statuses "
                      "are inferred from the trial folders", stacklevel=2)
        return {}


def _measurements(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in TUNE_BOOKKEEPING and k not in IDENTITY}


def epochs_frame(records: Sequence[TrialRecord]) -> pd.DataFrame:
    """One row per trial per reported epoch, in report order: every measurement reported, hp_<name> included."""
    rows = [{"trial_id": r.trial_id, **_measurements(row)} for r in records for row in r.rows]
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["trial_id", "epoch"]
    frame = pd.DataFrame(rows, columns=columns)
    empty = [c for c in frame.columns if frame[c].isna().all()]
    lineage = {"donor_epoch": "Int64"} if "donor_epoch" in frame and "donor_epoch" not in empty else {}
    return frame.astype({"trial_id": str, "epoch": "int64", **dict.fromkeys(empty, float), **lineage})


def _hyperparameters(record: TrialRecord) -> dict[str, Any]:
    """The trial's hp_<name> values: as its last report states them, else as Tune sampled them."""
    if record.rows:
        return {k: v for k, v in record.rows[-1].items() if k.startswith(HP_PREFIX)}
    return {HP_PREFIX + k: layers_text(v) if isinstance(v, list) else v
            for k, v in record.config.items() if k in HYPERPARAMETERS}


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def trial_row(record: TrialRecord, sweep: Mapping[str, Any]) -> dict[str, Any]:
    """The trials-table row of one trial, from its reported rows and the sweep (sweep.json's mapping)."""
    rows, scheduler, scaling = record.rows, sweep["scheduler"], sweep["scaling"]
    last = rows[-1] if rows else {}
    epochs = max((int(row["epoch"]) for row in rows), default=0)
    test = last.get("best_val_test_acc")
    seconds = wall_time(rows)
    return {
        "trial_id": record.trial_id,
        "status": record.status,
        "config_id": last.get("config_id"),
        "seed": last.get("seed"),
        "repeat": last.get("repeat"),
        **_hyperparameters(record),
        "epochs": epochs,
        "stopped_early": stopped_early(record.status, epochs, scheduler),
        # the trainer's running best (carried by its checkpoints): the lineage's, also after a PBT exploit or a resume
        "best_val_acc": _number(last.get("best_val_acc")),
        "last_val_acc": _number(last.get("val_acc")),
        "test_acc": math.nan if test is None else float(test),
        "wall_time_s": seconds,
        "device_hours": seconds / 3600 * devices(scaling),
        "device": "gpu" if scaling["use_gpu"] else "cpu",
        "num_workers": scaling["num_workers"],
        "max_t": scheduler["max_t"],
        "dataset": last.get("dataset"),
        "network": last.get("network"),
        "width": last.get("width"),
        # the evaluations beyond top-1: each one's last value (val_*: at the last evaluated epoch; test_*: of the
        # best-validation weights, at the end)
        **{key: value for key in evaluation_keys() if (value := _last_value(rows, key)) is not None},
    }


def _last_value(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    """The last reported value of `key` in rows (None if never reported)."""
    return next((float(row[key]) for row in reversed(rows) if row.get(key) is not None), None)


def trials_frame(records: Sequence[TrialRecord], sweep: Mapping[str, Any]) -> pd.DataFrame:
    """One row per trial in trial-id order, the hp_<name> columns right after its identity, the evaluations
    (val_ece, test_fgsm_acc, ...) that any trial reported at the end."""
    frame = pd.DataFrame([trial_row(r, sweep) for r in sorted(records, key=lambda r: r.trial_id)])
    if frame.empty:
        return pd.DataFrame(columns=list(TRIAL_COLUMNS))
    hp = [f"{HP_PREFIX}{name}" for name in HYPERPARAMETERS if f"{HP_PREFIX}{name}" in frame.columns]
    evaluated = [key for key in evaluation_keys() if key in frame.columns]
    frame = frame[[*TRIAL_COLUMNS[:5], *hp, *TRIAL_COLUMNS[5:], *evaluated]]
    return frame.astype({"seed": "Int64", "repeat": "Int64", "epochs": "int64", "num_workers": "int64",
                         "max_t": "int64"})


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Which rows of `points` (n x k, every column higher-is-better) no other row dominates (>= in every
    column and > in one). Equal points do not dominate each other: all stay on the front."""
    points = np.asarray(points, dtype=float)
    ge = (points[:, None, :] >= points[None, :, :]).all(axis=2)  # ge[i, j]: i is at least as good as j everywhere
    gt = (points[:, None, :] > points[None, :, :]).any(axis=2)
    dominated = (ge & gt).any(axis=0)
    return ~dominated


def objective_rows(epochs: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Per trial, its last epoch at which every objective in `names` was reported (evaluations such as val_ece
    come only at some epochs): trial_id, epoch and the objectives, in the trials' order of appearance."""
    frame = epochs.reindex(columns=["trial_id", "epoch", *names])
    return frame.dropna(subset=list(names)).groupby("trial_id", sort=False).tail(1).reset_index(drop=True)
