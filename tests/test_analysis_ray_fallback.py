"""Without trials.parquet/epochs.parquet, the tables come from Ray's own result.json and params.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import analysis

# Per trial: (config, val_acc per epoch, seconds per epoch, failed).
TRIALS = {
    "t_00000": (
        {"alpha": 2.0, "mix_layers": [0, 4], "sinkhorn": {"eps": 0.1}, "dataset": "digits"},
        [20.0, 40.0, 55.0, 60.0],
        3.0,
        False,
    ),
    "t_00001": (
        {"alpha": 0.5, "mix_layers": [0, 1], "sinkhorn": {"eps": 1.0}, "dataset": "digits"},
        [10.0],
        2.0,
        False,
    ),
    "t_00002": (
        {"alpha": 1.0, "mix_layers": [0, 4], "sinkhorn": {"eps": 0.01}, "dataset": "digits"},
        [30.0, 35.0],
        4.0,
        True,
    ),
    "t_00003": (
        {"alpha": 1.5, "mix_layers": [0, 2], "sinkhorn": {"eps": 0.3}, "dataset": "digits"},
        [25.0, 45.0, 50.0, 52.0],
        1.0,
        False,
    ),
}
SWEEP = {
    "scheduler": {"metric": "val_acc", "mode": "max", "max_t": 4, "grace_period": 1, "reduction_factor": 2}
}


def write_ray_experiment(root: Path) -> Path:
    """An experiment directory as Ray Tune leaves it: one folder per trial, no tables."""
    root.mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps(SWEEP))
    (root / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    for trial_id, (config, accuracies, seconds, failed) in TRIALS.items():
        trial_dir = root / f"train_{trial_id}_alpha={config['alpha']}"
        trial_dir.mkdir()
        (trial_dir / "params.json").write_text(json.dumps(config))
        lines = [
            json.dumps(
                {
                    "epoch": epoch,
                    "val_acc": acc,
                    "trial_id": trial_id,
                    "training_iteration": epoch,
                    "time_total_s": seconds * epoch,
                    "done": False,
                    "config": config,
                    "hostname": "h",
                }
            )
            for epoch, acc in enumerate(accuracies, start=1)
        ]
        (trial_dir / "result.json").write_text("\n".join(lines) + "\n")
        if failed:
            (trial_dir / "error.txt").write_text("Traceback: boom")
    return root


@pytest.fixture
def ray_experiment(tmp_path: Path) -> Path:
    """A hand-built experiment directory holding only Ray's per-trial files."""
    return write_ray_experiment(tmp_path / "ray_sweep")


def test_trials_table_from_ray_files(ray_experiment: Path) -> None:
    experiment = analysis.load(ray_experiment)
    trials = experiment.trials.set_index("trial_id")
    assert sorted(experiment.hyperparameters) == ["alpha", "eps", "mix_layers"]
    assert trials.loc["t_00000", "hp_mix_layers"] == "0,4"
    assert trials.loc["t_00000", "dataset"] == "digits"
    for trial_id, (config, accuracies, seconds, failed) in TRIALS.items():
        assert trials.loc[trial_id, "hp_eps"] == config["sinkhorn"]["eps"]
        assert trials.loc[trial_id, "best_val_acc"] == max(accuracies)
        assert trials.loc[trial_id, "last_val_acc"] == accuracies[-1]
        assert trials.loc[trial_id, "epochs"] == len(accuracies)
        assert trials.loc[trial_id, "stopped_early"] == (len(accuracies) < 4 and not failed)  # errors are not stops
        assert trials.loc[trial_id, "device_hours"] == pytest.approx(seconds * len(accuracies) / 3600)
    assert trials["status"].to_dict() == {
        "t_00000": "TERMINATED",
        "t_00001": "TERMINATED",
        "t_00002": "ERROR",
        "t_00003": "TERMINATED",
    }
    assert list(experiment.epochs.columns[:2]) == ["trial_id", "epoch"]
    assert "hostname" not in experiment.epochs and len(experiment.epochs) == 11


def test_rungs_and_cost_from_ray_files(ray_experiment: Path) -> None:
    experiment = analysis.load(ray_experiment)
    rungs = analysis.asha_rungs(experiment)
    assert list(rungs["epoch"]) == [1, 2, 4]
    assert list(rungs["reached"]) == [4, 3, 2]
    assert list(rungs["continued"]) == [3, 2, 0]
    assert rungs["cutoff"].iloc[0] == pytest.approx(22.5)  # median of 20, 10, 30, 25 (reduction factor 2)
    summary = analysis.cost_summary(experiment).iloc[0]
    assert summary["device_hours"] == pytest.approx((12 + 2 + 8 + 4) / 3600)
    assert summary["device_hours_at_max_t"] == pytest.approx((12 + 8 + 16 + 4) / 3600)


def test_file_uri_reads_like_a_path(ray_experiment: Path) -> None:
    by_path, by_uri = analysis.load(ray_experiment), analysis.load(ray_experiment.as_uri())
    assert by_uri.name == "ray_sweep"
    assert by_uri.trials.equals(by_path.trials) and by_uri.epochs.equals(by_path.epochs)


def test_real_sweep_without_tables_falls_back_to_same_numbers(sweep_experiment: Path, tmp_path: Path) -> None:
    copy = tmp_path / "no_tables"
    shutil.copytree(sweep_experiment, copy, ignore=shutil.ignore_patterns("trials.*", "epochs.*"))
    tables, ray = analysis.load(sweep_experiment), analysis.load(copy)
    columns = ["trial_id", "epochs", "best_val_acc", "last_val_acc", "stopped_early"]
    expected = tables.trials[columns].sort_values("trial_id", ignore_index=True)
    assert ray.trials[columns].sort_values("trial_id", ignore_index=True).equals(expected)
    assert set(ray.hyperparameters) <= set(tables.hyperparameters)
    assert analysis.asha_rungs(ray).equals(analysis.asha_rungs(tables))
