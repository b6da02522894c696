"""Rebuild the trials and epochs tables from Ray Tune's per-trial files (result.json, params.json)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from analysis.schema import HP_PREFIX
from analysis.storage import is_file, read_json, read_text, subdirectories
from analysis.sweep import scheduler_settings

RAY_BOOKKEEPING = frozenset(
    [
        "config",
        "date",
        "hostname",
        "node_ip",
        "pid",
        "timestamp",
        "done",
        "checkpoint_dir_name",
        "time_since_restore",
        "iterations_since_restore",
    ]
)
CONSTANT_COLUMNS = ("dataset", "network", "width", "device")


def _leaves(config: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Yield (key path, value) for every leaf of a nested config; lists become text like "0,4"."""
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key), ",".join(map(str, value)) if isinstance(value, list) else value


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """Flatten a nested config to leaf names, joining the key path with "_" where names collide."""
    leaves = list(_leaves(config))
    counts = Counter(path[-1] for path, _ in leaves)
    return {path[-1] if counts[path[-1]] == 1 else "_".join(path): value for path, value in leaves}


def _read_trial(
    fs: pafs.FileSystem, trial_dir: str
) -> tuple[list[dict[str, Any]], dict[str, Any], str] | None:
    """One trial's reported metrics per epoch, flattened config and status; None if it reported nothing."""
    text = read_text(fs, f"{trial_dir}/result.json")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not rows:
        return None
    params_path = f"{trial_dir}/params.json"
    config = read_json(fs, params_path) if is_file(fs, params_path) else rows[0].get("config", {})
    metrics = [
        {"epoch": row["training_iteration"]} | {k: v for k, v in row.items() if k not in RAY_BOOKKEEPING}
        for row in rows
    ]
    status = "ERROR" if is_file(fs, f"{trial_dir}/error.txt") else "TERMINATED"
    return metrics, flatten_config(config), status


def read_ray_results(
    fs: pafs.FileSystem, root: str, sweep: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (trials, epochs) tables of the experiment at `root`, from its trial directories."""
    trials = [
        t for d in subdirectories(fs, root) if is_file(fs, f"{d}/result.json") and (t := _read_trial(fs, d))
    ]
    if not trials:
        return pd.DataFrame(), pd.DataFrame()
    epochs = pd.DataFrame([row for metrics, _, _ in trials for row in metrics])
    epochs = epochs.astype(dict.fromkeys(epochs.columns[epochs.isna().all()], float))
    epochs = epochs[["trial_id", "epoch", *epochs.columns.drop(["trial_id", "epoch"])]]
    ids = [metrics[0]["trial_id"] for metrics, _, _ in trials]
    config = pd.DataFrame([cfg for _, cfg, _ in trials], index=ids)
    last = epochs.groupby("trial_id").tail(1).set_index("trial_id").loc[ids]
    by_trial = epochs.groupby("trial_id")
    table = pd.DataFrame({"trial_id": ids, "status": [status for _, _, status in trials]}, index=ids)
    for name in config.columns[config.nunique(dropna=False) > 1]:
        table[HP_PREFIX + name] = config[name]
    table["epochs"] = by_trial["epoch"].max()
    table["best_val_acc"] = by_trial["val_acc"].max()
    table["last_val_acc"] = last["val_acc"]
    table["test_acc"] = last.get("best_val_test_acc", np.nan)
    table["wall_time_s"] = last["time_total_s"]
    table["num_workers"] = config.get("num_workers", 1)
    table["device_hours"] = table["wall_time_s"] * table["num_workers"] / 3600
    table["max_t"] = scheduler_settings(sweep).max_t or int(table["epochs"].max())
    table["stopped_early"] = (table["status"] != "ERROR") & (table["epochs"] < table["max_t"])
    for name in CONSTANT_COLUMNS:
        if name in config:
            table[name] = config[name]
    return table.reset_index(drop=True), epochs
