"""ASHA's rungs as the scheduler decided them (decisions.parquet), checked against the epochs each trial reported;
the recomputation for experiments without decisions checked against Ray's own bracket."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.experiments import write_experiment
from ray.tune.schedulers.async_hyperband import _Bracket

import analysis
from analysis.experiment import SchedulerSettings
from tune_jobs.schema import milestones


@pytest.fixture(scope="module", params=[(0, 2, 2.0, 3), (5, 1, 3.0, 2)], ids=["rf2-grace2", "rf3-grace1"])
def written(request, tmp_path_factory: pytest.TempPathFactory):
    """Finished ASHA sweeps with tables: different seeds, rung spacings and arrival orders."""
    seed, grace, rf, concurrency = request.param
    return write_experiment(tmp_path_factory.mktemp("rungs") / "sweep", configs=5, repeats=2, max_t=9,
                            grace_period=grace, reduction_factor=rf, concurrency=concurrency, seed=seed, tables=True)


def raw(written) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """decisions, epochs and trials read with pandas alone."""
    return tuple(pd.read_parquet(written.root / f"{n}.parquet") for n in ("decisions", "epochs", "trials"))


def test_decisions_agree_with_the_epochs_reported(written) -> None:
    decisions, epochs, trials = raw(written)
    max_t = written.sweep["scheduler"]["max_t"]
    rungs = sorted(set(decisions["milestone"]) - {max_t})
    last_epoch = epochs.groupby("trial_id")["epoch"].max()
    for trial_id, last in last_epoch.items():
        mine = decisions[decisions["trial_id"] == trial_id]
        for milestone in rungs:
            if last > milestone:  # reported past it: ASHA let it go on there
                assert (mine[mine["milestone"] == milestone]["decision"] == "CONTINUE").sum() == 1
        final = mine.iloc[-1]
        if trials.set_index("trial_id").loc[trial_id, "stopped_early"]:
            assert final["decision"] == "STOP" and final["epoch"] == last and final["milestone"] < max_t
        if last == max_t:
            assert final["decision"] == "STOP" and final["milestone"] == max_t and np.isnan(final["cutoff"])
    stops = decisions[(decisions["decision"] == "STOP") & (decisions["milestone"] < max_t)]
    assert set(stops["trial_id"]) == set(trials.loc[trials["stopped_early"], "trial_id"])
    assert len(stops) and (last_epoch == max_t).any()  # both kinds of end were checked
    for row in decisions.itertuples():  # every value decided on is the one the trial reported at that epoch
        at = epochs[(epochs["trial_id"] == row.trial_id) & (epochs["epoch"] == row.epoch)]
        assert at["val_acc"].tolist() == [row.value]


def test_rung_results_are_the_decisions(written) -> None:
    decisions, _, _ = raw(written)
    results = analysis.rung_results(analysis.load(written.root))
    key = ["trial_id", "milestone", "epoch", "decision"]
    pd.testing.assert_frame_equal(results.sort_values(key).reset_index(drop=True)[[*key, "value", "cutoff"]],
                                  decisions.sort_values(key).reset_index(drop=True)[[*key, "value", "cutoff"]])
    max_t = written.sweep["scheduler"]["max_t"]
    expected = np.where(decisions["decision"] == "CONTINUE", "continued",
                        np.where(decisions["milestone"] >= max_t, "completed", "stopped"))
    assert sorted(zip(decisions["trial_id"], decisions["milestone"], expected, strict=True)) == sorted(
        zip(results["trial_id"], results["milestone"], results["outcome"], strict=True))


def test_rung_table_counts_the_decisions(written) -> None:
    decisions, _, _ = raw(written)
    table = analysis.asha_rungs(analysis.load(written.root))
    assert list(table["epoch"]) == sorted(set(decisions["milestone"]))
    assert (table["source"] == "decisions.parquet").all()
    for row in table.itertuples():
        at = decisions[decisions["milestone"] == row.epoch]
        assert row.reached == len(at) == at["trial_id"].nunique()
        assert row.continued == (at["decision"] == "CONTINUE").sum()
        assert row.stopped + row.completed == (at["decision"] == "STOP").sum() and row.undecided == 0
        faced = at["cutoff"].dropna()
        if len(faced):
            assert (row.cutoff_min, row.cutoff_max) == (faced.min(), faced.max())
        assert row.best == at["value"].max()


def test_rung_plot_draws_every_decision_and_its_cut_off(written) -> None:
    decisions, _, _ = raw(written)
    fig = analysis.asha_rung_plot(analysis.load(written.root))
    ax = fig.axes[0]
    points = [c for c in ax.collections if c.get_label() in ("continued", "stopped", "completed")]
    assert sum(len(c.get_offsets()) for c in points) == len(decisions)
    ticks = next(c for c in ax.collections if c.get_label() == "cut-off it was compared with")
    assert sorted(ticks.get_offsets()[:, 1]) == pytest.approx(sorted(decisions["cutoff"].dropna()))


@pytest.mark.parametrize(("grace", "max_t", "rf"), [(1, 8, 2), (2, 9, 3), (1, 100, 3), (4, 4, 2), (3, 50, 1.5)])
def test_rung_epochs_are_the_schedulers_milestones(grace: int, max_t: int, rf: float) -> None:
    settings = SchedulerSettings(kind="asha", max_t=max_t, grace_period=grace, reduction_factor=rf)
    assert analysis.rung_epochs(settings) == sorted(milestones(grace, max_t, rf))
    assert analysis.rung_epochs(SchedulerSettings(kind="fifo", max_t=max_t)) == []


def test_without_decisions_the_rungs_are_recomputed_as_ray_would(tmp_path: Path) -> None:
    written = write_experiment(tmp_path / "old", configs=5, repeats=2, max_t=8, grace_period=1, decisions=False,
                               seed=2)
    experiment = analysis.load(written.root)
    assert experiment.decisions is None
    bracket = _Bracket(1, 8, 2, s=0)
    table = analysis.asha_rungs(experiment)
    assert list(table["epoch"]) == sorted(m for m, _ in bracket._rungs)
    last = {t: len(truth.rows) for t, truth in written.trials.items()}
    for row in table.itertuples():
        at = {t: truth.rows[int(row.epoch) - 1]["val_acc"] for t, truth in written.trials.items()
              if last[t] >= row.epoch}
        assert row.reached == len(at) and row.continued == sum(last[t] > row.epoch for t in at)
        assert row.cutoff_min == row.cutoff_max == pytest.approx(bracket.cutoff(at))
        assert row.source.startswith("recomputed")


def test_recomputed_rungs_do_not_call_a_running_trial_stopped(tmp_path: Path) -> None:
    written = write_experiment(tmp_path / "cut", configs=4, repeats=2, max_t=8, grace_period=1, decisions=False,
                               cut=0.4)
    results = analysis.rung_results(analysis.load(written.root))
    for trial_id in written.status("RUNNING"):
        mine = results[results["trial_id"] == trial_id]
        assert "stopped" not in set(mine["outcome"])
        last_epoch = len(written.trials[trial_id].rows)
        assert set(mine.loc[mine["epoch"] == last_epoch, "outcome"]) <= {"running"}
    assert written.status("RUNNING")
