"""Pareto fronts of multi-objective sweeps, against a brute-force dominance check written here."""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict

import numpy as np
import pytest
from helpers.experiments import write_experiment

import analysis

OBJECTIVES = [("val_acc", "max"), ("val_ece", "min"), ("val_fgsm_acc", "max")]


def dominates(a: dict[str, float], b: dict[str, float], objectives: list[tuple[str, str]]) -> bool:
    """a is at least as good as b on every objective and better on one."""
    better = lambda x, y, mode: x > y if mode == "max" else x < y
    no_worse = all(not better(b[m], a[m], mode) for m, mode in objectives)
    return no_worse and any(better(a[m], b[m], mode) for m, mode in objectives)


def brute_front(points: dict[str, dict[str, float]], objectives: list[tuple[str, str]]) -> set[str]:
    return {k for k, p in points.items() if not any(dominates(q, p, objectives) for j, q in points.items() if j != k)}


def last_complete(rows: list[dict], names: list[str]) -> dict | None:
    """The trial's last row where every objective has a value."""
    complete = [r for r in rows if all(r.get(n) is not None for n in names)]
    return complete[-1] if complete else None


def objectives_of(written) -> list[tuple[str, str]]:
    """(metric, mode) of each objective, as sweep.json states them."""
    return [(o["metric"], o["mode"]) for o in written.sweep["objectives"]]


@pytest.fixture(scope="module", params=[2, 3], ids=["2-objectives", "3-objectives"])
def written(request, tmp_path_factory: pytest.TempPathFactory):
    """A FIFO sweep, 3 seeds per configuration, evaluations every 3 epochs, one trial erroring after epoch 4."""
    return write_experiment(tmp_path_factory.mktemp("pareto") / "sweep", scheduler="fifo", configs=6, repeats=3,
                            max_t=8, objectives=OBJECTIVES[: request.param], eval_every=3, errors={4: 4}, seed=1,
                            tables=True)


def test_objective_values_come_from_the_last_epoch_with_every_objective(written) -> None:
    experiment = analysis.load(written.root)
    names = [m for m, _ in objectives_of(written)]
    values = analysis.objective_values(experiment).set_index("trial_id")
    for trial_id, truth in written.trials.items():
        row = last_complete(truth.rows, names)
        assert row is not None
        assert values.loc[trial_id, "epoch"] == row["epoch"]
        assert values.loc[trial_id, names].tolist() == pytest.approx([row[n] for n in names])
    error = written.status("ERROR")[0]
    assert values.loc[error, "epoch"] == 3 and not values.loc[error, "counted"]  # evaluated at 3, failed after 4


def test_pareto_trials_are_exactly_the_non_dominated_counted_trials(written) -> None:
    objectives = objectives_of(written)
    names = [m for m, _ in objectives]
    points = {t: {n: last_complete(truth.rows, names)[n] for n in names} for t, truth in written.trials.items()
              if truth.status == "TERMINATED"}
    front = analysis.pareto_front(analysis.load(written.root), by="trial")
    expected = brute_front(points, objectives)
    assert set(front["trial_id"]) == expected and len(front) == len(expected)
    assert 0 < len(expected) < len(points)
    first, mode = objectives[0]
    assert front[first].is_monotonic_decreasing if mode == "max" else front[first].is_monotonic_increasing


def test_pareto_configurations_compare_the_means_of_their_seeds(written) -> None:
    objectives = objectives_of(written)
    names = [m for m, _ in objectives]
    by_config = defaultdict(list)
    for truth in written.trials.values():
        if truth.status == "TERMINATED":
            by_config[truth.identity["config_id"]].append(last_complete(truth.rows, names))
    means = {c: {n: statistics.mean(r[n] for r in rows) for n in names} for c, rows in by_config.items()}
    front = analysis.pareto_front(analysis.load(written.root), by="config").set_index("config_id")
    assert set(front.index) == brute_front(means, objectives)
    for cid, row in front.iterrows():
        assert row["n"] == len(by_config[cid])
        assert [row[f"{n}_mean"] for n in names] == pytest.approx([means[cid][n] for n in names])


def test_pareto_plot_joins_the_front(written) -> None:
    experiment = analysis.load(written.root)
    fig = analysis.pareto_plot(experiment)
    objectives = experiment.objectives
    front = analysis.pareto_front(experiment, by="trial")
    first = fig.axes[0]
    assert len([ax for ax in fig.axes if ax.axison]) == len(list(itertools.combinations(objectives, 2)))
    highlighted = next(c for c in first.collections if c.get_label() == "non-dominated trial")
    assert sorted(highlighted.get_offsets()[:, 0]) == pytest.approx(sorted(front[objectives[0].metric]))
    if len(objectives) == 2:
        line = next(line for line in first.lines if line.get_gid() == "trial front")
        ordered = front.sort_values(objectives[0].metric)
        assert list(line.get_xdata()) == pytest.approx(list(ordered[objectives[0].metric]))
        assert list(line.get_ydata()) == pytest.approx(list(ordered[objectives[1].metric]))


@pytest.mark.parametrize("seed", range(5))
def test_pareto_mask_matches_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 4, size=(40, 3)).astype(float)  # few values: many ties and duplicates
    named = {str(i): {str(k): p[k] for k in range(3)} for i, p in enumerate(points)}
    expected = brute_front(named, [(str(k), "max") for k in range(3)])
    assert {str(i) for i in np.flatnonzero(analysis.pareto_mask(points))} == expected


def test_single_objective_sweep_has_no_pareto_outputs(tmp_path) -> None:
    written = write_experiment(tmp_path / "single", scheduler="fifo", configs=2, repeats=1, max_t=3)
    experiment = analysis.load(written.root)
    assert experiment.objectives == []
    assert analysis.objective_values(experiment).empty
    assert "pareto_trials" not in analysis.tables(experiment)


def test_tune_best_front_lists_the_same_non_dominated_trials(written, capsys) -> None:
    """`alignmixup-tune best --front` (tune_jobs.best.front) agrees with the brute force, weights file included."""
    from tune_jobs import best, cli
    from tune_jobs.schema import EPOCHS_TABLE, TRIALS_TABLE
    from tune_jobs.tables import read_sweep

    objectives = objectives_of(written)
    names = [m for m, _ in objectives]
    points = {t: {n: last_complete(truth.rows, names)[n] for n in names} for t, truth in written.trials.items()
              if truth.status == "TERMINATED"}
    root = str(written.root)
    table = best.front(read_sweep(root), best.read_table(root, TRIALS_TABLE), best.read_table(root, EPOCHS_TABLE))
    assert set(table["trial_id"]) == brute_front(points, objectives) and len(table) == len(set(table["trial_id"]))
    for row in table.itertuples():
        assert row.best_weights == written.trials[row.trial_id].rows[-1]["best_weights_file"]
    assert cli.main(["best", root, "--front"]) == 0
    printed = capsys.readouterr().out
    assert all(f"  {t} (epoch" in printed for t in table["trial_id"])
    assert cli.main(["best", root, "--front", "--metric", "val_ece"]) == 2
