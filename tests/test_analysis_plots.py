"""What the figures draw: each trial styled by its outcome, the spread over seeds, intervals only where n allows."""

from __future__ import annotations

import io
import math

import pytest
from helpers.experiments import write_experiment
from matplotlib.image import imread

import analysis


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> analysis.Experiment:
    """A sweep cut off while running: finished, stopped, running and errored trials, 3 seeds per configuration."""
    written = write_experiment(tmp_path_factory.mktemp("plots") / "sweep", configs=4, repeats=3, grace_period=2,
                               concurrency=4, cut=0.7, errors={1: 3, 2: 3}, sinkhorn=True, seed=3)
    return analysis.load(written.root)


def test_the_sweep_has_every_outcome(experiment) -> None:
    assert set(experiment.outcome) == {"finished", "stopped early", "running", "error"}


def test_learning_curves_style_each_trial_by_its_outcome(experiment) -> None:
    fig = analysis.learning_curves(experiment)
    ax = fig.axes[0]
    outcome = dict(zip(experiment.trials["trial_id"], experiment.outcome, strict=True))
    expected_style = {"finished": "-", "running": ":", "stopped early": "--", "error": "-."}
    expected_end = {"running": "o", "stopped early": "x", "error": "X"}
    epochs = experiment.epochs
    for trial_id, state in outcome.items():
        lines = [line for line in ax.lines if line.get_gid() == trial_id]
        curve = [line for line in lines if line.get_linestyle() != "None"]
        assert len(curve) == 1 and curve[0].get_linestyle() == expected_style[state]
        mine = epochs[epochs["trial_id"] == trial_id]
        assert list(curve[0].get_xdata()) == list(mine["epoch"])
        ends = [line for line in lines if line.get_linestyle() == "None"]
        if state in expected_end:
            assert len(ends) == 1 and ends[0].get_marker() == expected_end[state]
            assert list(ends[0].get_xdata()) == [mine["epoch"].iloc[-1]]
        else:
            assert not ends
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"running (o: latest epoch)", "stopped early (x: stop)", "error"} <= labels
    finished = experiment.trials[experiment.outcome == "finished"]
    assert set(experiment.config_labels()[c] for c in finished["config_id"]) <= labels  # labelled by hyperparameters


def test_seed_spread_shows_every_seed_and_intervals_only_from_three(experiment) -> None:
    fig = analysis.seed_spread(experiment)
    ax = fig.axes[0]
    configs = analysis.configurations(experiment)
    points = {c.get_gid(): c for c in ax.collections if c.get_gid() not in ("mean", "ci95")}
    assert set(points) == set(experiment.trials["trial_id"])
    counted = dict(zip(experiment.trials["trial_id"], experiment.counted, strict=True))
    for trial_id, collection in points.items():
        faces = collection.get_facecolors()
        filled = len(faces) > 0 and faces[0][3] > 0
        assert filled == counted[trial_id]  # hollow: running or errored, not counted
    intervals = [c for c in ax.collections if c.get_gid() == "ci95"]
    means = [c for c in ax.collections if c.get_gid() == "mean"]
    assert [m.get_segments()[0][0][1] for m in means] == pytest.approx(list(configs["best_val_acc_mean"]),
                                                                       nan_ok=True)
    with_interval = configs[configs["n"] >= 3]
    assert len(intervals) == len(with_interval)
    for bar, row in zip(intervals, with_interval.itertuples(), strict=True):
        (_, low), (_, high) = bar.get_segments()[0]
        assert (low, high) == pytest.approx((row.ci95_low, row.ci95_high))
    assert (configs["n"] < 3).any() and all(math.isnan(v) for v in configs.loc[configs["n"] < 3, "ci95_low"])


def test_every_figure_renders(experiment) -> None:
    figures = analysis.figures(experiment)
    assert set(figures) == {"learning_curves", "training_curves", "seed_spread", "accuracy_vs_hyperparameters",
                            "asha_rungs", "sinkhorn_convergence"}
    for name, figure in figures.items():
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=60)
        pixels = imread(io.BytesIO(buffer.getvalue()), format="png")
        assert pixels[..., :3].std() > 0.05, name


def test_sinkhorn_plot_places_each_trial_at_its_eps(experiment) -> None:
    table = analysis.sinkhorn_convergence(experiment)
    fig = analysis.sinkhorn_plot(experiment)
    offsets = [o for c in fig.axes[0].collections for o in c.get_offsets().tolist()]
    assert sorted(map(tuple, offsets)) == pytest.approx(sorted(zip(table["hp_eps"], table["sinkhorn_iters_mean"],
                                                                   strict=True)))
    assert fig.axes[0].get_xscale() == "log" and fig.axes[1].get_yscale() == "log"
