"""Population-based sweeps: exploits, lineages and schedules, against the lineage the simulation tracked."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers.experiments import write_experiment

import analysis


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):
    """Synchronous PBT: 8 trials, exploits every 2 epochs of 10."""
    return write_experiment(tmp_path_factory.mktemp("pbt") / "sweep", scheduler="pbt", configs=4, repeats=2,
                            max_t=10, perturbation_interval=2, seed=2, tables=True)


@pytest.fixture(scope="module")
def experiment(written) -> analysis.Experiment:
    return analysis.load(written.root)


def test_the_sweep_has_chains_of_exploits(written) -> None:
    best = max(written.trials.values(), key=lambda t: t.rows[-1]["val_acc"])
    assert len(best.lineage) >= 3 and min(len(t.lineage) for t in written.trials.values()) == 1


def test_lineage_of_every_trial_is_the_true_one(written, experiment) -> None:
    for trial_id, truth in written.trials.items():
        table = analysis.lineage(experiment, trial_id)
        assert table[["trial_id", "first_epoch", "last_epoch"]].values.tolist() == truth.lineage
        assert list(table["step"]) == list(range(len(truth.lineage)))
        assert pd.isna(table["donor_trial_id"].iloc[0]) and pd.isna(table["donor_epoch"].iloc[0])
        assert list(table["donor_trial_id"].iloc[1:]) == [s[0] for s in truth.lineage[:-1]]
        assert list(table["donor_epoch"].iloc[1:]) == [s[2] for s in truth.lineage[:-1]]


def test_default_lineage_is_the_trial_best_at_its_last_epoch(written, experiment) -> None:
    best = max(written.trials.values(), key=lambda t: t.rows[-1]["val_acc"])
    assert analysis.final_best_trial(experiment) == best.trial_id
    assert analysis.lineage(experiment)["trial_id"].iloc[-1] == best.trial_id


def test_exploits_list_each_donor_and_the_perturbed_values(written, experiment) -> None:
    table = analysis.exploits(experiment)
    expected = [(t, r["epoch"], r["donor_trial_id"], r["donor_epoch"]) for t, truth in written.trials.items()
                for r in truth.rows if r["donor_trial_id"] is not None]
    assert sorted(map(tuple, table[["trial_id", "epoch", "donor_trial_id", "donor_epoch"]].values.tolist())) == sorted(
        expected)
    for row in table.itertuples():
        donor_row = written.trials[row.donor_trial_id].rows[row.donor_epoch - 1]
        assert row.hp_alpha_donor == donor_row["hp_alpha"] and row.hp_eps_donor == donor_row["hp_eps"]
        assert row.hp_alpha / row.hp_alpha_donor == pytest.approx(0.8) or row.hp_alpha / row.hp_alpha_donor == (
            pytest.approx(1.25))


def test_population_based_trials_are_never_early_stops(experiment) -> None:
    assert not experiment.trials["stopped_early"].any()
    assert experiment.scheduler.population_based and not experiment.scheduler.has_rungs
    tables = analysis.tables(experiment)
    assert "asha_rungs" not in tables and {"pbt_exploits", "pbt_lineage"} <= set(tables)
    assert analysis.cost_summary(experiment).iloc[0]["device_hours_saved"] == 0


def test_schedule_plot_draws_the_lineage_through_its_donors(experiment) -> None:
    chain = analysis.lineage(experiment)
    fig = analysis.schedule_plot(experiment)
    alpha = fig.axes[0]
    drawn = [line for line in alpha.lines if line.get_gid() == "lineage"]
    assert len(drawn) == len(chain)
    for line, step in zip(drawn, chain.itertuples(), strict=True):
        x = line.get_xdata()
        assert (x[0], x[-1]) == (step.first_epoch - 1, step.last_epoch)  # each value held during its epoch
        assert line.get_ydata()[0] == pytest.approx(step.hp_alpha)


def test_reproduce_command_refuses_a_population_based_trial(experiment) -> None:
    with pytest.raises(ValueError, match="change during training"):
        analysis.reproduce_command(experiment, experiment.trials["trial_id"].iloc[0])


def test_lineage_follows_a_checkpoint_older_than_the_trials_own_epochs() -> None:
    """Asynchronous PBT: b, at epoch 4, restores a's epoch-2 checkpoint and reports epochs 3 and 4 again."""
    rows = [("a", e, None, None, 1.0) for e in (1, 2, 3, 4)] + [("b", e, None, None, 2.0) for e in (1, 2, 3, 4)]
    rows += [("b", 3, "a", 2, 1.25), ("b", 4, None, None, 1.25)]
    epochs = pd.DataFrame(rows, columns=["trial_id", "epoch", "donor_trial_id", "donor_epoch", "hp_alpha"])
    epochs = epochs.assign(val_acc=range(len(epochs)))
    trials = pd.DataFrame({"trial_id": ["a", "b"], "config_id": ["x", "y"], "status": "TERMINATED", "hp_alpha": [1.0,
                          2.0]})
    sweep = {"scheduler": {"kind": "pbt", "metric": "val_acc", "mode": "max", "max_t": 4},
             "search": {"alpha": {"uniform": [0.5, 4]}}}
    experiment = analysis.Experiment("x/async", trials, epochs, sweep)
    assert analysis.lineage(experiment, "b")[["trial_id", "first_epoch", "last_epoch"]].values.tolist() == [
        ["a", 1, 2], ["b", 3, 4]]
    assert analysis.lineage(experiment, "a")[["trial_id", "first_epoch", "last_epoch"]].values.tolist() == [
        ["a", 1, 4]]


def test_lineage_takes_the_donors_report_from_before_the_exploit() -> None:
    """b takes a's epoch-2 checkpoint at time 35; later a itself restores c's epoch-1 checkpoint and reports epoch 2
    again (time 45). b's model descends from a's first epoch-2 report, not from the later one."""
    rows = [("a", 1, None, None, 10.0), ("a", 2, None, None, 20.0), ("a", 3, None, None, 30.0),
            ("c", 1, None, None, 12.0), ("b", 1, None, None, 11.0), ("b", 2, None, None, 21.0),
            ("b", 3, "a", 2, 36.0), ("a", 2, "c", 1, 45.0), ("b", 4, None, None, 46.0), ("a", 3, None, None, 55.0)]
    epochs = pd.DataFrame(rows, columns=["trial_id", "epoch", "donor_trial_id", "donor_epoch", "reported_at"])
    epochs = epochs.assign(val_acc=range(len(epochs)), hp_alpha=1.0).sort_values("trial_id", kind="stable")
    trials = pd.DataFrame({"trial_id": ["a", "b", "c"], "config_id": ["x", "y", "z"], "status": "TERMINATED",
                           "hp_alpha": 1.0})
    sweep = {"scheduler": {"kind": "pbt", "metric": "val_acc", "mode": "max", "max_t": 4},
             "search": {"alpha": {"uniform": [0.5, 4]}}}
    experiment = analysis.Experiment("x/async", trials, epochs.reset_index(drop=True), sweep)
    steps = lambda t: analysis.lineage(experiment, t)[["trial_id", "first_epoch", "last_epoch"]].values.tolist()
    assert steps("b") == [["a", 1, 2], ["b", 3, 4]]
    assert steps("a") == [["c", 1, 1], ["a", 2, 3]]
    exploit = analysis.exploits(experiment).set_index("trial_id").loc["b"]
    assert exploit["donor_epoch"] == 2
