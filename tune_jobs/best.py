"""The best trial of a finished (or interrupted) sweep: chosen, traced, reproduced and exported.

A trial's *lineage* is the sequence of epoch rows that describe the model it ended with: its own rows back to
the first epoch of its current segment and, when that segment started from another trial's checkpoint (a PBT
exploit: `donor_trial_id`, `donor_epoch` on its first row), the donor's lineage up to the donor's epoch, as it
stood when the exploit happened. Re-run epochs are never reported twice (the worker drops them), so walking
back one epoch at a time through a trial's rows in report order finds exactly one row per epoch. Under ASHA and
FIFO a lineage is simply the trial's rows.

Each trial is scored by the sweep's metric over its lineage (max or min by its mode); with repeats, the best
configuration is the one with the best mean score over its seeds, and its best seed's trial is shown. The
trial's best-validation weights are the file its last checkpointed lineage row names (`best_weights_file`), its
TrainConfig is rebuilt from the rows' hyperparameters and seed, and under PBT the hyperparameters that changed
along the lineage become the TrainConfig's `schedule`, which `alignmixup-train --config` replays.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from alignmixup.config import TrainConfig
from alignmixup.console import ConfigError
from tune_jobs import storage
from tune_jobs.config import MUTABLE, SweepConfig, parse_layers
from tune_jobs.schema import (
    BEST_WEIGHTS_FILE,
    DONOR_COLUMNS,
    EPOCHS_TABLE,
    HP_PREFIX,
    REPORTED_AT,
    TRIALS_TABLE,
    objective_rows,
    pareto_mask,
)

BEST_FILE = "best.json"  # in an export: how the trial was chosen, its lineage and where its weights came from
DONOR, DONOR_EPOCH = DONOR_COLUMNS


class LineageError(ValueError):
    """A trial's rows do not give one row per epoch back to epoch 1 (a row missing from its result file)."""


def read_table(experiment: str, name: str) -> pd.DataFrame:
    """One of the sweep's tables (written when `alignmixup-tune run` or `resume` ends, interrupted or not)."""
    location = storage.join(experiment, name)
    if not storage.is_file(location):
        raise ConfigError(f"experiment: {experiment} has no {name} yet (still running, or killed before it wrote its "
                          "tables: resume it)")
    fs, path = storage.resolve(location)
    return pq.read_table(path, filesystem=fs).to_pandas()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def lineage(epochs: pd.DataFrame, trial_id: str, epoch: int | None = None,
            before: float | None = None) -> list[dict[str, Any]]:
    """The rows of the model trial `trial_id` had at `epoch` (default: its last row), epochs 1..epoch in order.

    `before`: only rows reported before this time (a donor's lineage as it stood when its checkpoint was taken).
    Each row keeps its `trial_id`: the trial that trained that epoch.
    """
    rows = epochs[epochs["trial_id"] == trial_id]
    if before is not None:
        rows = rows[rows[REPORTED_AT] < before]
    records = rows.to_dict("records")
    if epoch is not None:
        ends = [i for i, r in enumerate(records) if r["epoch"] == epoch]
        if not ends:
            raise LineageError(f"trial {trial_id}: no row at epoch {epoch} before the exploit that copied it")
        records = records[:ends[-1] + 1]
    if not records:
        return []
    out: list[dict[str, Any]] = []
    want = records[-1]["epoch"]
    for row in reversed(records):
        if row["epoch"] > want:  # a row of a timeline this model does not descend from
            continue
        if row["epoch"] < want:
            raise LineageError(f"trial {trial_id}: no row for epoch {want} of its lineage")
        out.append(row)
        want -= 1
        if not _missing(row.get(DONOR)):
            donor = lineage(epochs, row[DONOR], int(row[DONOR_EPOCH]), before=row[REPORTED_AT])
            if len(donor) != row["epoch"] - 1:
                raise LineageError(f"trial {trial_id}: its donor {row[DONOR]} has no lineage up to epoch "
                                   f"{row[DONOR_EPOCH]}")
            return donor + out[::-1]
        if want == 0:
            break
    if want != 0:
        raise LineageError(f"trial {trial_id}: its rows stop at epoch {want + 1}, not 1")
    return out[::-1]


def score(rows: list[dict[str, Any]], metric: str, mode: str) -> tuple[float, dict[str, Any]] | None:
    """The best value of `metric` over rows and the first row that reaches it; None if no row has a value."""
    valued = [r for r in rows if not _missing(r.get(metric))]
    if not valued:
        return None
    pick = max if mode == "max" else min
    best = pick(valued, key=lambda r: r[metric])
    return float(best[metric]), best


@dataclass(frozen=True)
class Best:
    """The chosen trial: its lineage, its score, and the group of seeds it was chosen from (with repeats)."""

    trial_id: str
    metric: str
    mode: str
    value: float
    row: dict[str, Any]  # the lineage row that reached the value
    rows: list[dict[str, Any]]  # the lineage
    identity: dict[str, Any]  # the trial's row of the trials table (config_id, seed, status, ...)
    config_mean: float | None  # mean score of its configuration over its seeds (repeats), else None
    seeds: int


def of_trial(trials: pd.DataFrame, epochs: pd.DataFrame, trial_id: str, metric: str, mode: str) -> Best | None:
    """A trial scored by `metric` over its lineage; None when no row of it has a value."""
    rows = lineage(epochs, trial_id)
    result = score(rows, metric, mode)
    if result is None:
        return None
    identity = trials.set_index("trial_id").loc[trial_id].to_dict()
    return Best(trial_id, metric, mode, result[0], result[1], rows, {"trial_id": trial_id, **identity}, None, 1)


def choose(trials: pd.DataFrame, epochs: pd.DataFrame, metric: str, mode: str, repeats: bool = False) -> Best:
    """The best trial by `metric` over each trial's lineage; with `repeats` (configurations trained under several
    seeds), the best configuration by its mean score over its seeds, then its best seed's trial."""
    if metric not in epochs.columns:
        raise ConfigError(f"argument --metric: the epochs table has no {metric!r} (it has "
                          f"{', '.join(c for c in epochs.columns if epochs[c].dtype.kind == 'f')})")
    scored = [b for t in dict.fromkeys(epochs["trial_id"]) if (b := of_trial(trials, epochs, t, metric, mode))]
    if not scored:
        raise ConfigError(f"argument --metric: no trial reported a value of {metric!r}")
    sign = 1.0 if mode == "max" else -1.0
    by_config: dict[str, list[float]] = {}
    for b in scored:
        by_config.setdefault(b.identity["config_id"], []).append(b.value)
    if repeats and any(len(values) > 1 for values in by_config.values()):
        means = {cid: sum(values) / len(values) for cid, values in by_config.items()}
        config = max(means, key=lambda cid: sign * means[cid])
        chosen = max((b for b in scored if b.identity["config_id"] == config), key=lambda b: sign * b.value)
        return replace(chosen, config_mean=means[config], seeds=len(by_config[config]))
    return max(scored, key=lambda b: sign * b.value)


def weights_location(rows: list[dict[str, Any]]) -> str | None:
    """The best-validation weights of a lineage: the file its last checkpointed row refers to."""
    return next((r[BEST_WEIGHTS_FILE] for r in reversed(rows) if not _missing(r.get(BEST_WEIGHTS_FILE))), None)


def _hp(row: dict[str, Any], name: str) -> Any:
    return row[HP_PREFIX + name]


def train_config(sweep: SweepConfig, best: Best) -> TrainConfig:
    """The TrainConfig that reproduces the trial: its starting hyperparameters and seed, and under PBT the
    hyperparameters that changed along its lineage as a schedule (segments from the epoch they took force)."""
    first = best.rows[0]
    sampled = {name: _hp(first, name) for name in sweep.space()}
    cfg = sweep.trial_config(sampled, seed=int(best.identity["seed"]))
    segments, previous = [], first
    for row in best.rows[1:]:
        changed = {name: _hp(row, name) for name in MUTABLE if _hp(row, name) != _hp(previous, name)}
        if changed:
            if "mix_layers" in changed:
                changed["mix_layers"] = parse_layers(changed["mix_layers"])
            segments.append({"from_epoch": int(row["epoch"]), **changed})
        previous = row
    return TrainConfig.model_validate({**cfg.model_dump(), "schedule": segments})


def segments_text(rows: list[dict[str, Any]]) -> str:
    """Which trial trained which epochs of a lineage, e.g. 'epochs 1-4 by a_00002, 5-8 by a_00000'."""
    parts, start = [], 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i]["trial_id"] != rows[start]["trial_id"]:
            parts.append(f"{rows[start]['epoch']}-{rows[i - 1]['epoch']} by {rows[start]['trial_id']}")
            start = i
    return "epochs " + ", ".join(parts)


def export(directory: Path, best: Best, cfg: TrainConfig, location: str, summary: dict[str, Any]) -> dict[str, Path]:
    """Write the weights (safetensors, with the TrainConfig in its header), the TrainConfig and best.json."""
    from alignmixup.weights import CONFIG_FILE, WEIGHTS_FILE, read_weights, weights_bytes

    state, header = read_weights(storage.read_bytes(location))
    header.pop("config")
    directory.mkdir(parents=True, exist_ok=True)
    files = {"weights": directory / WEIGHTS_FILE, "config": directory / CONFIG_FILE, "summary": directory / BEST_FILE}
    files["weights"].write_bytes(weights_bytes(state, cfg, **header))
    files["config"].write_text(cfg.model_dump_json(indent=2) + "\n")
    files["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    return files


def report(experiment: str, sweep: SweepConfig, metric: str | None = None, mode: str | None = None,
           directory: Path | None = None) -> str:
    """What `alignmixup-tune best` prints (and, with `directory`, exports)."""
    from alignmixup.cli import command_line
    from alignmixup.weights import CONFIG_FILE, read_header

    metric, mode = metric or sweep.metric, mode or sweep.mode
    best = choose(read_table(experiment, TRIALS_TABLE), read_table(experiment, EPOCHS_TABLE), metric, mode,
                  repeats=sweep.repeats > 1)
    cfg = train_config(sweep, best)
    location = weights_location(best.rows)
    lines = [f"best trial {best.trial_id}: {metric} {best.value:.4g} at epoch {best.row['epoch']} ({mode} over the "
             f"epochs of the model it ended with)"]
    if best.config_mean is not None:
        lines.append(f"  chosen over seeds: configuration {best.identity['config_id']} has the best mean {metric} "
                     f"({best.config_mean:.4g} over {best.seeds} seeds); this is its best seed's trial")
    if any(r["trial_id"] != best.trial_id for r in best.rows) or cfg.schedule:
        lines.append(f"  lineage: {segments_text(best.rows)}; {len(cfg.schedule)} hyperparameter change(s)")
    summary: dict[str, Any] = {
        "experiment": experiment, "trial_id": best.trial_id, "metric": metric, "mode": mode, "value": best.value,
        "epoch": int(best.row["epoch"]), "config_mean": best.config_mean, "seeds": best.seeds,
        "lineage": [{"epoch": int(r["epoch"]), "trial_id": r["trial_id"]} for r in best.rows],
        "best_weights": location, "checkpoint": next((r.get("checkpoint_path") for r in reversed(best.rows)
                                                      if not _missing(r.get("checkpoint_path"))), None),
    }
    if location is None:
        lines.append("  no best-validation weights were saved (no epoch of it was checkpointed)")
    else:
        header = read_header(storage.read_bytes(location))
        final = best.rows[-1].get("best_val_test_acc")
        tested = "" if _missing(final) else f"; test_acc of these weights {final:.4g} (reported at its last epoch)"
        lines.append(f"  best-validation weights: {location} (epoch {header['epoch']}, val_acc "
                     f"{header['val_acc']:.4g}{tested})")
        summary.update(weights_epoch=header["epoch"], weights_val_acc=header["val_acc"],
                       test_acc=None if _missing(final) else float(final))
        if metric == "val_acc" and header["epoch"] != best.row["epoch"]:
            lines.append(f"  note: its best epoch, {best.row['epoch']}, was not checkpointed before the trial ended; "
                         f"the saved weights are from epoch {header['epoch']}")
    if summary["checkpoint"]:
        lines.append(f"  last checkpoint: {summary['checkpoint']}")
    if directory is not None and location is not None:
        files = export(directory, best, cfg, location, summary)
        lines.append(f"  exported: {', '.join(str(f) for f in files.values())}")
    if cfg.schedule:
        where = directory / CONFIG_FILE if directory is not None else "DIR/" + CONFIG_FILE + " (from --export DIR)"
        lines.append(f"  reproduce: alignmixup-train --config {where}")
    else:
        lines.append(f"  reproduce: alignmixup-train {' '.join(command_line(cfg))}")
    return "\n".join(lines)


def front(sweep: SweepConfig, trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """The Pareto front of a multi-objective sweep: the finished (TERMINATED) trials that no other dominates on the
    objectives' values at their last epoch with every objective reported (analysis.pareto_front's definition),
    best first on the first objective, each with its hyperparameters and best-validation weights file."""
    if not sweep.objectives:
        raise ConfigError("argument --front: the sweep has no objectives (a single-metric sweep has no front)")
    names = [o.metric for o in sweep.objectives]
    finished = trials[trials["status"] == "TERMINATED"]
    values = objective_rows(epochs[epochs["trial_id"].isin(finished["trial_id"])], names)
    if values.empty:
        return values
    signed = np.column_stack([(1.0 if o.mode == "max" else -1.0) * values[o.metric].to_numpy(float)
                              for o in sweep.objectives])
    table = values[pareto_mask(signed)]
    hps = [c for c in trials.columns if c.startswith(HP_PREFIX)]
    table = table.merge(trials[["trial_id", "config_id", "seed", *hps]], on="trial_id", how="left")
    table["best_weights"] = [weights_location(lineage(epochs, t)) for t in table["trial_id"]]
    first = sweep.objectives[0]
    return table.sort_values(first.metric, ascending=first.mode == "min", ignore_index=True)


def front_report(experiment: str, sweep: SweepConfig) -> str:
    """What `alignmixup-tune best --front` prints: the non-dominated trials, one line each."""
    table = front(sweep, read_table(experiment, TRIALS_TABLE), read_table(experiment, EPOCHS_TABLE))
    goals = ", ".join(f"{o.mode} {o.metric}" for o in sweep.objectives or [])
    lines = [f"Pareto front ({goals}): {len(table)} non-dominated finished trial(s)"]
    for row in table.to_dict("records"):
        values = ", ".join(f"{o.metric} {row[o.metric]:.4g}" for o in sweep.objectives or [])
        hps = ", ".join(f"{c.removeprefix(HP_PREFIX)}={row[c]:.4g}" if isinstance(row[c], float) else
                        f"{c.removeprefix(HP_PREFIX)}={row[c]}" for c in row if c.startswith(HP_PREFIX))
        lines.append(f"  {row['trial_id']} (epoch {row['epoch']}): {values}; {hps}; weights {row['best_weights']}")
    lines.append("pick one by an objective with --metric NAME --mode max|min (and --export DIR)")
    return "\n".join(lines)
