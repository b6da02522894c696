"""The shared real sweep (tests/conftest.py): tables vs what the trials reported, ASHA, DDP, worker retry."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_SWEEP, SweepRun, read_results
from ray.tune.schedulers.async_hyperband import _Bracket

from tune_jobs.config import HYPERPARAMETERS
from tune_jobs.tables import EPOCH_COLUMNS, read_sweep

ARRIVAL_TOLERANCE_S = 2.0  # reported_at is stamped on rank 0; Tune sees the result a little later


@pytest.fixture(scope="module")
def epochs(sweep_run: SweepRun) -> pd.DataFrame:
    return pd.read_parquet(sweep_run.experiment / "epochs.parquet")


@pytest.fixture(scope="module")
def trials(sweep_run: SweepRun) -> pd.DataFrame:
    return pd.read_parquet(sweep_run.experiment / "trials.parquet").set_index("trial_id")


def test_epochs_table_equals_reported_results(sweep_run: SweepRun, epochs: pd.DataFrame) -> None:
    reported = read_results(sweep_run.experiment)
    assert len(reported) == SMALL_SWEEP["num_samples"]
    assert list(epochs.columns) == list(EPOCH_COLUMNS)
    for trial_id, rows in reported.items():
        table = epochs[epochs["trial_id"] == trial_id].to_dict("records")
        assert len(table) == len(rows)
        for mine, theirs in zip(table, rows, strict=True):
            for column in EPOCH_COLUMNS[1:]:
                expected, got = theirs[column], mine[column]
                if isinstance(expected, list):
                    assert list(got) == expected, column
                elif expected is None:
                    assert got is None or np.isnan(got), column
                else:
                    assert got == expected, column


def test_trials_table_equals_reported_results(sweep_run: SweepRun, trials: pd.DataFrame) -> None:
    reported = read_results(sweep_run.experiment)
    assert set(trials.index) == set(reported)
    scheduler = SMALL_SWEEP["scheduler"]
    for trial_id, rows in reported.items():
        row = trials.loc[trial_id]
        params = json.loads((sweep_run.experiment / f"trial_{trial_id}" / "params.json").read_text())
        for name in ("alpha", "eps", "mix_layers"):
            assert row[f"hp_{name}"] == params[name]
        assert row["hp_cost_scaling"] == "mean" and row["hp_method"] == "alignmixup"
        assert {f"hp_{name}" for name in HYPERPARAMETERS} <= set(trials.columns)
        assert row["status"] == "TERMINATED"
        assert row["epochs"] == rows[-1]["epoch"] == len(rows)
        assert row["best_val_acc"] == max(r["val_acc"] for r in rows)
        assert row["last_val_acc"] == rows[-1]["val_acc"]
        final_test = rows[-1]["best_val_test_acc"]
        assert (np.isnan(row["test_acc"]) if final_test is None else row["test_acc"] == final_test)
        assert (row["test_acc"] >= 0) == (row["epochs"] == scheduler["max_t"])  # computed at the final epoch
        assert row["wall_time_s"] == pytest.approx(rows[-1]["time_total_s"])
        assert row["device_hours"] == pytest.approx(row["wall_time_s"] / 3600 * 2)  # 2 workers x 1 thread
        assert (row["device"], row["num_workers"], row["max_t"]) == ("cpu", 2, scheduler["max_t"])
        assert (row["dataset"], row["network"], row["width"]) == ("digits", "preactresnet18", 0.125)
    csv = pd.read_csv(sweep_run.experiment / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
    pd.testing.assert_frame_equal(csv, trials, check_dtype=False)


def test_sweep_json_round_trips(sweep_run: SweepRun) -> None:
    sweep = read_sweep(str(sweep_run.experiment))
    saved = json.loads((sweep_run.experiment / "sweep.json").read_text())
    assert saved["scheduler"] == {"kind": "asha", **SMALL_SWEEP["scheduler"]}
    assert saved["search"]["mix_layers"] == SMALL_SWEEP["search"]["mix_layers"]
    assert sweep.model_dump(mode="json") == saved


def test_every_trial_ran_two_ddp_ranks(epochs: pd.DataFrame) -> None:
    assert (epochs["world_size"] == 2).all()
    for row in epochs.itertuples():
        by_rank = list(row.train_samples_by_rank)
        assert len(by_rank) == 2 and by_rank[0] == by_rank[1] == row.train_samples > 0
        assert sum(by_rank) == row.train_samples_global
        assert len(set(row.pid_by_rank)) == 2  # two processes


def test_early_stops_agree_with_asha_rungs(sweep_run: SweepRun, epochs: pd.DataFrame, trials: pd.DataFrame) -> None:
    """Replay Ray's ASHA bracket over the rung results in arrival order; near-ties may arrive either way."""
    s = SMALL_SWEEP["scheduler"]
    bracket = _Bracket(s["grace_period"], s["max_t"], s["reduction_factor"], s=0)
    rungs = sorted(m for m, _ in bracket._rungs if m < s["max_t"])
    last = epochs.groupby("trial_id")["epoch"].max()
    assert (trials["stopped_early"] == (last[trials.index] < s["max_t"])).all()
    assert trials["stopped_early"].any(), "ASHA stopped no trial: the sweep does not exercise it"
    assert set(last[last < s["max_t"]]) <= set(rungs), "a trial stopped between rungs"
    for milestone in rungs:
        at = epochs[epochs["epoch"] == milestone].sort_values("reported_at")
        for row in at.itertuples():
            others = at[at["trial_id"] != row.trial_id]
            before = others[others["reported_at"] < row.reported_at - ARRIVAL_TOLERANCE_S]["val_acc"].tolist()
            near = others[abs(others["reported_at"] - row.reported_at) <= ARRIVAL_TOLERANCE_S]["val_acc"].tolist()
            possible = set()
            for k in range(len(near) + 1):
                for subset in itertools.combinations(near, k):
                    recorded = {i: v for i, v in enumerate(before + list(subset))}
                    cutoff = bracket.cutoff(recorded)
                    possible.add(cutoff is not None and row.val_acc < cutoff)
            stopped_here = bool(last[row.trial_id] == milestone)
            assert stopped_here in possible, f"trial {row.trial_id} at epoch {milestone}"


def test_killed_worker_is_retried_from_its_checkpoint(sweep_run: SweepRun, epochs: pd.DataFrame) -> None:
    killed = sweep_run.killed
    rows = epochs[epochs["trial_id"] == killed["trial_id"]]
    assert list(rows["epoch"]) == list(range(1, len(rows) + 1)), "epochs restarted or repeated"
    assert len(rows) > killed["after_epoch"]
    pids = [tuple(p) for p in rows["pid_by_rank"]]
    assert killed["pid"] in pids[0]
    after = pids[killed["after_epoch"]:]
    assert all(killed["pid"] not in p for p in after), "the killed worker kept reporting"
    assert not set(pids[0]) & set(after[0]), "the worker group was not restarted"
    assert "retry" in sweep_run.output.lower()


def test_cli_prints_best_trial_and_tables(sweep_run: SweepRun, trials: pd.DataFrame) -> None:
    best = trials["best_val_acc"].idxmax()
    assert f"best trial {best}: val_acc {trials.loc[best, 'best_val_acc']:.2f}" in sweep_run.output
    assert f"tables in {sweep_run.experiment}: trials.parquet, trials.csv, epochs.parquet" in sweep_run.output
