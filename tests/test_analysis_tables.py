"""The analysis tables checked against the raw per-epoch results of a real finished sweep."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ray.tune.schedulers.async_hyperband import _Bracket
from scipy import stats

import analysis
from analysis.sensitivity import is_continuous


@pytest.fixture(scope="module")
def experiment(sweep_experiment: Path) -> analysis.Experiment:
    """The shared sweep, loaded."""
    return analysis.load(sweep_experiment)


@pytest.fixture(scope="module")
def raw_epochs(sweep_experiment: Path) -> pd.DataFrame:
    """epochs.parquet read directly, without the analysis package."""
    return pd.read_parquet(sweep_experiment / "epochs.parquet")


@pytest.fixture(scope="module")
def raw_trials(sweep_experiment: Path) -> pd.DataFrame:
    """trials.parquet read directly, without the analysis package."""
    return pd.read_parquet(sweep_experiment / "trials.parquet").set_index("trial_id")


@pytest.fixture(scope="module")
def scheduler(sweep_experiment: Path) -> dict:
    """The scheduler settings exactly as sweep.json states them."""
    return json.loads((sweep_experiment / "sweep.json").read_text())["scheduler"]


def test_leaderboard_best_and_final_accuracy_match_raw_epochs(experiment, raw_epochs, raw_trials) -> None:
    board = analysis.leaderboard(experiment, k=None).set_index("trial_id")
    curves = raw_epochs.sort_values("epoch").groupby("trial_id")
    assert set(board.index) == set(raw_trials.index) == set(curves.groups)
    np.testing.assert_allclose(board["best_val_acc"], curves["val_acc"].max()[board.index])
    np.testing.assert_allclose(board["last_val_acc"], curves["val_acc"].last()[board.index])
    assert (board["epochs"] == curves["epoch"].max()[board.index]).all()
    assert list(board["rank"]) == list(range(1, len(board) + 1))
    assert board["best_val_acc"].is_monotonic_decreasing
    np.testing.assert_allclose(board["device_hours"], raw_trials.loc[board.index, "device_hours"])
    top = analysis.leaderboard(experiment, k=2)
    assert list(top["trial_id"]) == list(board.index[:2])
    assert {f"hp_{name}" for name in experiment.hyperparameters} <= set(top.columns)


def test_asha_rungs_match_ray_and_raw_epochs(experiment, raw_epochs, scheduler) -> None:
    bracket = _Bracket(scheduler["grace_period"], scheduler["max_t"], scheduler["reduction_factor"], s=0)
    milestones = sorted(milestone for milestone, _ in bracket._rungs)
    rungs = analysis.asha_rungs(experiment)
    assert list(rungs["epoch"]) == milestones
    last_epoch = raw_epochs.groupby("trial_id")["epoch"].max()
    for row in rungs.itertuples():
        at_rung = raw_epochs[raw_epochs["epoch"] == row.epoch].set_index("trial_id")["val_acc"]
        assert row.reached == (last_epoch >= row.epoch).sum() == len(at_rung)
        assert row.continued == (last_epoch > row.epoch).sum()
        assert row.cutoff == pytest.approx(bracket.cutoff(at_rung.to_dict()))
        assert row.best == pytest.approx(at_rung.max())
    assert rungs["reached"].iloc[0] == len(last_epoch)


def test_stopped_early_counts_match_rungs(experiment, raw_epochs, scheduler) -> None:
    last_epoch = raw_epochs.groupby("trial_id")["epoch"].max()
    trials = experiment.trials.set_index("trial_id")
    assert (trials["stopped_early"] == (last_epoch[trials.index] < scheduler["max_t"])).all()
    results = analysis.rung_results(experiment)
    assert (results["outcome"] == "stopped").sum() == trials["stopped_early"].sum()
    assert (results["outcome"] == "completed").sum() == (~trials["stopped_early"]).sum()


def test_cost_sums_device_hours_and_extrapolates_per_trial(experiment, raw_epochs, raw_trials) -> None:
    epochs_run = raw_epochs.groupby("trial_id")["epoch"].max()[raw_trials.index]
    full = (raw_trials["device_hours"] / epochs_run * raw_trials["max_t"]).sum()
    summary = analysis.cost_summary(experiment).iloc[0]
    assert summary["device_hours"] == pytest.approx(raw_trials["device_hours"].sum())
    assert summary["device_hours_at_max_t"] == pytest.approx(full)
    assert summary["device_hours_saved"] == pytest.approx(full - raw_trials["device_hours"].sum())
    assert summary["epochs_run"] == epochs_run.sum()
    assert summary["stopped_early"] == raw_trials["stopped_early"].sum()
    assert (summary["device_hours_saved"] > 0) == bool(raw_trials["stopped_early"].any())
    by_trial = analysis.cost_by_trial(experiment)
    assert by_trial["device_hours"].sum() == pytest.approx(summary["device_hours"])


def test_sensitivity_groups_every_trial_with_t_intervals(experiment, raw_trials) -> None:
    table = analysis.sensitivity(experiment)
    assert set(table["hyperparameter"]) == set(experiment.hyperparameters)
    for name, rows in table.groupby("hyperparameter"):
        assert rows["n"].sum() == raw_trials["best_val_acc"].notna().sum()
        assert (rows["mean"] * rows["n"]).sum() == pytest.approx(raw_trials["best_val_acc"].sum())
        values = raw_trials[f"hp_{name}"]
        if not is_continuous(values):
            for row in rows.itertuples():
                group = raw_trials.loc[values.astype(str) == row.level, "best_val_acc"]
                assert row.mean == pytest.approx(group.mean())
                if len(group) > 1:
                    interval = stats.t.interval(0.95, len(group) - 1, group.mean(), stats.sem(group))
                    assert (row.ci95_low, row.ci95_high) == pytest.approx(interval)


def test_rank_correlation_is_spearman(experiment, raw_trials) -> None:
    table = analysis.rank_correlation(experiment).set_index("hyperparameter")
    for name, row in table.iterrows():
        expected = raw_trials[f"hp_{name}"].corr(raw_trials["best_val_acc"], method="spearman")
        assert row["spearman_rho"] == pytest.approx(expected, nan_ok=True)


def test_published_comparison_says_none_for_digits(experiment) -> None:
    table = analysis.published_comparison(experiment)
    assert experiment.trials["dataset"].iloc[0] == "digits"
    assert list(table.columns) == ["note"]
    assert "no published AlignMixup result for digits" in table["note"].iloc[0]


def test_published_comparison_lines_up_release_checkpoints(experiment, raw_epochs) -> None:
    as_cifar = dataclasses.replace(
        experiment, trials=experiment.trials.assign(dataset="cifar10", network="preactresnet18")
    )
    table = analysis.published_comparison(as_cifar)
    assert list(table["published_test_acc"]) == [43.6, 91.0, 94.9, 96.1, 97.05]
    first = table.iloc[0]
    assert first["epoch"] == 1
    assert first["trials_reached"] == raw_epochs["trial_id"].nunique()
    assert first["best_val_acc"] == pytest.approx(raw_epochs.loc[raw_epochs["epoch"] == 1, "val_acc"].max())
    assert table.iloc[-1]["best_val_acc"] == pytest.approx(raw_epochs["val_acc"].max())
