"""The shared real sweep (tests/conftest.py): tables against what the trials reported, seeds and repeats, DDP,
a worker retry, and ASHA's decisions across a driver SIGKILL and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.sweeps import FIRST_RUNG, SMALL_SWEEP, SweepRun, SweepTables

from tune_jobs.schema import HP_PREFIX, HYPERPARAMETERS, IDENTITY, TUNE_BOOKKEEPING

SCHEDULER = SMALL_SWEEP["scheduler"]


def test_epochs_table_equals_reported_results(sweep_tables: SweepTables) -> None:
    epochs, results = sweep_tables.epochs, sweep_tables.results
    assert len(results) == SMALL_SWEEP["num_samples"] * SMALL_SWEEP["repeats"]
    reported = {k for rows in results.values() for row in rows for k in row} - TUNE_BOOKKEEPING - set(IDENTITY)
    assert set(epochs.columns) == reported | {"trial_id"}
    for trial_id, rows in results.items():
        table = epochs[epochs["trial_id"] == trial_id].to_dict("records")
        assert len(table) == len(rows)
        for mine, theirs in zip(table, rows, strict=True):
            for column in reported:
                expected, got = theirs.get(column), mine[column]
                if isinstance(expected, list):
                    assert list(got) == expected, column
                elif expected is None:
                    assert got is None or pd.isna(got), column
                else:
                    assert got == expected, column


def segments_wall_time(rows: list[dict]) -> float:
    """Independent of tune_jobs.schema: split where time_total_s restarts, add each segment's last value."""
    ends, last = [], None
    for row in rows:
        if last is not None and row["time_total_s"] < last:
            ends.append(last)
        last = row["time_total_s"]
    return sum(ends) + (last or 0.0)


def test_trials_table_equals_reported_results(sweep_tables: SweepTables) -> None:
    trials, experiment = sweep_tables.trials, sweep_tables.experiment
    assert set(trials.index) == set(sweep_tables.results)
    for trial_id, rows in sweep_tables.results.items():
        row = trials.loc[trial_id]
        params = json.loads((experiment / f"trial_{trial_id}" / "params.json").read_text())
        for name in ("alpha", "eps", "mix_layers"):
            assert row[f"hp_{name}"] == params[name] == rows[-1][f"hp_{name}"]
        assert row["repeat"] == params["repeat"] == rows[0]["repeat"]
        assert row["hp_cost_scaling"] == "mean" and row["hp_method"] == "alignmixup"
        assert {f"hp_{name}" for name in HYPERPARAMETERS} <= set(trials.columns)
        assert row["status"] == "TERMINATED"
        assert (row["seed"], row["config_id"]) == (rows[0]["seed"], rows[0]["config_id"])
        assert row["epochs"] == rows[-1]["epoch"] == max(r["epoch"] for r in rows)
        assert row["best_val_acc"] == rows[-1]["best_val_acc"] >= max(r["val_acc"] for r in rows)
        if [r["epoch"] for r in rows] == list(range(1, len(rows) + 1)):  # no epoch lost to the driver's death
            assert row["best_val_acc"] == max(r["val_acc"] for r in rows)
        assert row["last_val_acc"] == rows[-1]["val_acc"]
        final_test = rows[-1]["best_val_test_acc"]
        assert (np.isnan(row["test_acc"]) if final_test is None else row["test_acc"] == final_test)
        assert (row["test_acc"] >= 0) == (row["epochs"] == SCHEDULER["max_t"])  # computed at the final epoch
        assert row["wall_time_s"] == pytest.approx(segments_wall_time(rows))
        assert row["device_hours"] == pytest.approx(row["wall_time_s"] / 3600 * 2)  # 2 workers x 1 thread
        assert (row["device"], row["num_workers"], row["max_t"]) == ("cpu", 2, SCHEDULER["max_t"])
        assert (row["dataset"], row["network"], row["width"]) == ("digits", "preactresnet18", 0.125)
        assert row["stopped_early"] == (row["epochs"] < SCHEDULER["max_t"])
        for key in ("val_ece", "val_oe", "val_nll", "val_fgsm_acc", "test_ece", "test_fgsm_acc"):
            reported = [r[key] for r in rows if r.get(key) is not None]  # the last evaluation's value
            assert (row[key] == reported[-1]) if reported else np.isnan(row[key]), key
        assert row["val_ece"] >= 0 and (row["test_fgsm_acc"] >= 0) == (row["epochs"] == SCHEDULER["max_t"])
    csv = pd.read_csv(experiment / "trials.csv", dtype={"trial_id": str, "config_id": str}).set_index("trial_id")
    pd.testing.assert_frame_equal(csv, trials, check_dtype=False)


def test_each_configuration_trains_under_two_seeds(sweep_tables: SweepTables) -> None:
    trials, epochs = sweep_tables.trials, sweep_tables.epochs
    groups = trials.groupby("config_id")
    assert len(groups) == SMALL_SWEEP["num_samples"]
    for _, group in groups:
        assert sorted(group["repeat"]) == [0, 1] and group["seed"].nunique() == 2
        hps = group[[c for c in group.columns if c.startswith(HP_PREFIX)]]
        assert (hps.nunique() == 1).all()  # the same hyperparameters
        a, b = (epochs[epochs["trial_id"] == t].set_index("epoch")["train_loss"] for t in group.index)
        assert not np.allclose(a.loc[1], b.loc[1])  # different draws from the first epoch on
    assert trials["seed"].is_unique


def test_every_trial_ran_two_ddp_ranks(sweep_tables: SweepTables) -> None:
    epochs = sweep_tables.epochs
    assert (epochs["world_size"] == 2).all()
    for row in epochs.itertuples():
        by_rank = list(row.train_samples_by_rank)
        assert len(by_rank) == 2 and by_rank[0] == by_rank[1] == row.train_samples > 0
        assert sum(by_rank) == row.train_samples_global
        assert len(set(row.pid_by_rank)) == 2  # two processes


def test_decisions_agree_with_the_epochs(sweep_tables: SweepTables) -> None:
    decisions, trials = sweep_tables.decisions, sweep_tables.trials
    milestones = [m for m in (2.0, 4.0) if m < SCHEDULER["max_t"]]
    for trial_id, row in trials.iterrows():
        mine = decisions[decisions["trial_id"] == trial_id]
        for milestone in milestones:
            if row["epochs"] > milestone:
                assert mine[mine["milestone"] == milestone]["decision"].tolist() == ["CONTINUE"], (trial_id, milestone)
        last = mine.iloc[-1]
        assert (last["decision"], last["epoch"]) == ("STOP", row["epochs"])
        assert row["stopped_early"] == (last["milestone"] < SCHEDULER["max_t"])
    assert trials["stopped_early"].any(), "ASHA stopped no trial: the sweep does not exercise it"


def test_cutoffs_are_ashas_rule_over_the_rung_including_recordings_before_the_driver_was_lost(
    sweep_run: SweepRun, sweep_tables: SweepTables
) -> None:
    decisions = sweep_tables.decisions
    before = pd.DataFrame(sweep_run.decisions_before_driver_kill)
    # the decisions made before the kill are all still there, in order, unchanged
    pd.testing.assert_frame_equal(decisions.iloc[:len(before)][["trial_id", "epoch", "milestone", "decision"]]
                                  .reset_index(drop=True), before[["trial_id", "epoch", "milestone", "decision"]],
                                  check_dtype=False)
    at_rung = decisions[decisions["milestone"] == FIRST_RUNG]
    values = at_rung["value"].tolist()
    for i, cutoff in enumerate(at_rung["cutoff"]):
        expected = np.nanpercentile(values[:i], (1 - 1 / SCHEDULER["reduction_factor"]) * 100) if i else np.nan
        assert cutoff == pytest.approx(expected, nan_ok=True)
    after = at_rung.iloc[(before["milestone"] == FIRST_RUNG).sum():]
    assert len(after) >= 1 and after["cutoff"].notna().all()  # judged against the rung recorded before the kill


def test_killed_worker_is_retried_from_its_checkpoint(sweep_run: SweepRun, sweep_tables: SweepTables) -> None:
    killed, epochs = sweep_run.killed_worker, sweep_tables.epochs
    rows = epochs[epochs["trial_id"] == killed["trial_id"]]
    assert rows["epoch"].is_monotonic_increasing and rows["epoch"].is_unique, "epochs restarted or repeated"
    assert len(rows) > killed["after_epoch"]
    pids = [tuple(p) for p in rows["pid_by_rank"]]
    assert killed["pid"] in pids[0]
    after = pids[killed["after_epoch"]:]
    assert all(killed["pid"] not in p for p in after), "the killed worker kept reporting"
    assert not set(pids[0]) & set(after[0]), "the worker group was not restarted"
    assert "retry" in sweep_run.output.lower()


def test_resume_prints_best_trial_and_tables(sweep_run: SweepRun, sweep_tables: SweepTables) -> None:
    """The summary names the configuration with the best mean val_acc over its two seeds, then its best seed's
    trial, that trial's best-validation weights (a file that exists) and the command that reproduces it."""
    trials, epochs = sweep_tables.trials, sweep_tables.epochs
    per_trial = epochs.groupby("trial_id")["val_acc"].max()
    per_config = per_trial.groupby(trials.loc[per_trial.index, "config_id"]).mean()
    config = per_config.idxmax()
    best = per_trial[trials.index[trials["config_id"] == config]].idxmax()
    out = sweep_run.output
    assert f"best trial {best}: val_acc {per_trial[best]:.4g}" in out
    assert f"configuration {config} has the best mean val_acc ({per_config[config]:.4g} over 2 seeds)" in out
    weights = out.split("best-validation weights: ", 1)[1].split(" (epoch", 1)[0]
    assert f"/best_weights/{best}/" in weights and Path(weights).is_file()
    assert "reproduce: alignmixup-train --dataset digits --network preactresnet18" in out
    assert f"tables in {sweep_run.experiment}: trials.parquet, trials.csv, epochs.parquet" in sweep_run.output


def test_every_trial_reports_its_objectives_where_it_ends(sweep_tables: SweepTables) -> None:
    """Multi-objective: each trial's last row holds every objective, evaluated at the rung where ASHA stopped it or
    at max_t; calibration and FGSM ran on 128 validation images there, and on the test split at max_t."""
    objectives = [o["metric"] for o in SMALL_SWEEP["objectives"]]
    for trial_id, rows in sweep_tables.results.items():
        last = rows[-1]
        assert all(last[m] is not None for m in objectives), trial_id
        assert last["val_images"] == 128 and 0 <= last["val_ece"] <= 1
        assert last["val_fgsm_acc"] <= last["val_clean_acc"]
        assert (last.get("test_ece") is not None) == (last["epoch"] == SCHEDULER["max_t"])
        evaluated = [r["epoch"] for r in rows if r.get("val_ece") is not None]
        assert evaluated == [e for e in (2, 4) if e <= last["epoch"]]  # the rungs and the end, nothing else
