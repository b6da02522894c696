"""The tables checked against independent computations from the rows each synthetic trial reported."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from helpers.experiments import write_experiment
from scipy import stats

import analysis


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):
    """5 configurations x 3 seeds under ASHA (some stopped early), one errored trial, Sinkhorn reported."""
    return write_experiment(tmp_path_factory.mktemp("tables") / "sweep", configs=5, repeats=3, max_t=8,
                            grace_period=2, concurrency=4, errors={6: 5}, sinkhorn=True, tables=True, seed=4)


@pytest.fixture(scope="module")
def experiment(written) -> analysis.Experiment:
    return analysis.load(written.root)


def best_by_config(written) -> dict[str, list[float]]:
    """config_id -> the best val_acc of each of its TERMINATED trials, from the rows written."""
    out = defaultdict(list)
    for truth in written.trials.values():
        out[truth.identity["config_id"]]  # every configuration, even one with no counted trial
        if truth.status == "TERMINATED":
            out[truth.identity["config_id"]].append(max(r["val_acc"] for r in truth.rows))
    return out


def test_the_sweep_has_what_the_tests_need(written) -> None:
    statuses = [t.status for t in written.trials.values()]
    assert statuses.count("ERROR") == 1 and any(t.stopped_by_asha for t in written.trials.values())
    assert any(len(v) >= 3 for v in best_by_config(written).values())  # an interval to check
    assert any(0 < len(v) < 3 for v in best_by_config(written).values())  # and a configuration without one


def test_mean_interval_gives_t_intervals_only_from_three_values() -> None:
    for values in ([71.0], [60.0, 61.5]):
        out = analysis.mean_interval(values)
        assert out["n"] == len(values) and out["mean"] == pytest.approx(statistics.mean(values))
        assert math.isnan(out["ci95_low"]) and math.isnan(out["ci95_high"]) and out["ci_note"] == "n too small"
    values = [60.0, 61.5, 58.25, 63.0]
    out = analysis.mean_interval([*values, float("nan")])
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert out["n"] == 4 and out["std"] == pytest.approx(statistics.stdev(values))
    assert (out["ci95_low"], out["ci95_high"]) == pytest.approx((low, high)) and out["ci_note"] == ""
    assert analysis.mean_interval([])["ci_note"] == "no counted trial"


def test_leaderboard_ranks_configurations_by_their_mean_over_seeds(written, experiment) -> None:
    expected = best_by_config(written)
    board = analysis.leaderboard(experiment, k=None)
    assert set(board["config_id"]) == set(expected) and list(board["rank"]) == list(range(1, len(expected) + 1))
    means = [statistics.mean(expected[c]) if expected[c] else math.nan for c in board["config_id"]]
    assert board["best_val_acc_mean"].tolist() == pytest.approx(means, nan_ok=True)
    assert [m for m in means if not math.isnan(m)] == sorted((m for m in means if not math.isnan(m)), reverse=True)
    for row in board.itertuples():
        values = expected[row.config_id]
        assert row.n == len(values)
        assert row.best_val_acc_std == pytest.approx(statistics.stdev(values) if len(values) > 1 else math.nan,
                                                     nan_ok=True)
        if len(values) >= 3:
            interval = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
            assert (row.ci95_low, row.ci95_high) == pytest.approx(interval)
        else:
            assert math.isnan(row.ci95_low) and row.ci_note in ("n too small", "no counted trial")
        members = [t for t, truth in written.trials.items() if truth.identity["config_id"] == row.config_id]
        tests = [written.trials[t].rows[-1]["best_val_test_acc"] for t in members
                 if written.trials[t].status == "TERMINATED" and written.trials[t].rows[-1]["best_val_test_acc"]]
        assert row.test_n == len(tests)
        assert row.test_acc_mean == pytest.approx(statistics.mean(tests) if tests else math.nan, nan_ok=True)
        assert row.trials.split(",") == members
        assert row.seeds.split(",") == [str(written.trials[t].identity["seed"]) for t in members]
        errored = [t for t in members if written.trials[t].status == "ERROR"]
        assert row.not_counted == ",".join(f"{t} (ERROR)" for t in errored)
    assert len(analysis.leaderboard(experiment, k=2)) == 2


def test_trial_leaderboard_ranks_every_trial_and_says_which_are_counted(written, experiment) -> None:
    board = analysis.trial_leaderboard(experiment, k=None).set_index("trial_id")
    assert set(board.index) == set(written.trials)
    assert board["best_val_acc"].is_monotonic_decreasing
    for trial_id, truth in written.trials.items():
        assert board.loc[trial_id, "status"] == truth.status
        assert board.loc[trial_id, "counted"] == (truth.status == "TERMINATED")


def test_sensitivity_averages_configurations_not_trials(written, experiment) -> None:
    means = {c: statistics.mean(v) for c, v in best_by_config(written).items() if v}
    layers = {t.identity["config_id"]: t.identity["hp_mix_layers"] for t in written.trials.values()}
    table = analysis.sensitivity(experiment)
    assert set(table["hyperparameter"]) == {"alpha", "mix_layers", "eps"}
    for _, rows in table.groupby("hyperparameter"):
        assert rows["n"].sum() == len(means)
        assert rows["trials"].sum() == sum(len(v) for v in best_by_config(written).values())
        assert (rows["mean"] * rows["n"]).sum() == pytest.approx(sum(means.values()))
    for row in table[table["hyperparameter"] == "mix_layers"].itertuples():
        group = [m for c, m in means.items() if layers[c] == row.level]
        assert row.n == len(group) and row.mean == pytest.approx(statistics.mean(group))
        if len(group) >= 3:
            assert (row.ci95_low, row.ci95_high) == pytest.approx(
                stats.t.interval(0.95, len(group) - 1, loc=np.mean(group), scale=stats.sem(group)))


def test_rank_correlation_is_spearman_over_configurations(written, experiment) -> None:
    means = {c: statistics.mean(v) for c, v in best_by_config(written).items() if v}
    alpha = {t.identity["config_id"]: t.identity["hp_alpha"] for t in written.trials.values()}
    table = analysis.rank_correlation(experiment).set_index("hyperparameter")
    expected = stats.spearmanr([alpha[c] for c in means], list(means.values()))
    assert table.loc["alpha", "n"] == len(means)
    assert table.loc["alpha", "spearman_rho"] == pytest.approx(expected.statistic)
    assert table.loc["alpha", "p_value"] == pytest.approx(expected.pvalue)
    assert "mix_layers" not in table.index


def test_cost_sums_device_hours_and_saves_only_what_asha_stopped(written, experiment) -> None:
    hours = {t: truth.seconds_per_epoch * len(truth.rows) / 3600 * 2 for t, truth in written.trials.items()}
    at_max_t = {t: hours[t] / len(truth.rows) * 8 for t, truth in written.trials.items()}
    stopped = [t for t, truth in written.trials.items() if truth.stopped_by_asha]
    summary = analysis.cost_summary(experiment).iloc[0]
    assert summary["device_hours"] == pytest.approx(sum(hours.values()))
    assert summary["device_hours_at_max_t"] == pytest.approx(sum(at_max_t.values()))
    assert summary["device_hours_saved"] == pytest.approx(sum(at_max_t[t] - hours[t] for t in stopped))
    assert summary["stopped_early"] == len(stopped) and summary["errored"] == 1 and summary["running"] == 0
    assert summary["epochs_run"] == sum(len(t.rows) for t in written.trials.values())
    by_trial = analysis.cost_by_trial(experiment).set_index("trial_id")
    error = written.status("ERROR")[0]
    assert by_trial.loc[error, "basis"].startswith("error after")


def test_compare_at_epoch_ranks_the_trials_that_reported_there(written, experiment) -> None:
    epoch = analysis.common_epoch(experiment)
    reached = {t: truth.rows[epoch - 1] for t, truth in written.trials.items() if len(truth.rows) >= epoch}
    assert len(reached) >= 2
    table = analysis.compare_at_epoch(experiment)
    assert list(table["trial_id"]) == sorted(reached, key=lambda t: -reached[t]["val_acc"])
    assert table["val_loss"].tolist() == pytest.approx([reached[t]["val_loss"] for t in table["trial_id"]])
    assert table.columns[0] == f"rank_at_epoch_{epoch}"
    first = analysis.compare_at_epoch(experiment, epoch=1)
    assert len(first) == len(written.trials)


def test_sinkhorn_table_summarises_the_epochs_with_an_aligned_batch(written, experiment) -> None:
    table = analysis.sinkhorn_convergence(experiment).set_index("trial_id")
    for trial_id, truth in written.trials.items():
        aligned = [r for r in truth.rows if r["sinkhorn_iters"] is not None]
        if not aligned:
            assert trial_id not in table.index
            continue
        row = table.loc[trial_id]
        assert row["aligned_epochs"] == len(aligned) and row["last_aligned_epoch"] == aligned[-1]["epoch"]
        assert row["sinkhorn_iters_mean"] == pytest.approx(statistics.mean(r["sinkhorn_iters"] for r in aligned))
        assert row["sinkhorn_marginal_err_last"] == pytest.approx(aligned[-1]["sinkhorn_marginal_err"])
        assert row["sinkhorn_marginal_err_max"] == pytest.approx(max(r["sinkhorn_marginal_err"] for r in aligned))
        assert row["hp_eps"] == truth.identity["hp_eps"]
    assert table["hp_eps"].is_monotonic_increasing


def test_published_comparison_says_none_for_digits(experiment) -> None:
    table = analysis.published_comparison(experiment)
    assert list(table.columns) == ["note"]
    assert "no published AlignMixup result for digits+preactresnet18" in table["note"].iloc[0]


def test_published_comparison_lines_up_release_checkpoints(written, experiment) -> None:
    as_cifar = dataclasses.replace(
        experiment, trials=experiment.trials.assign(dataset="cifar10", network="preactresnet18")
    )
    table = analysis.published_comparison(as_cifar)
    assert list(table["published_test_acc"]) == [43.6, 91.0, 94.9, 96.1, 97.05]
    first = table.iloc[0]
    assert first["epoch"] == 1 and first["trials_reached"] == len(written.trials)
    assert first["best_val_acc"] == pytest.approx(max(t.rows[0]["val_acc"] for t in written.trials.values()))
    assert table.iloc[-1]["best_val_acc"] == pytest.approx(max(r["val_acc"] for t in written.trials.values()
                                                                for r in t.rows))


def test_markdown_renders_every_row_and_escapes_pipes() -> None:
    table = pd.DataFrame({"a": [1.234567, float("nan")], "b": ["x|y", None]})
    assert analysis.to_markdown(table).splitlines() == ["| a | b |", "|---|---|", "| 1.235 | x\\|y |", "|  |  |"]
