"""Loading an experiment: from its tables or from Ray's own files (a running or cut-off sweep), with the same
numbers either way, checked against what the synthetic sweep wrote."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers.experiments import write_experiment

import analysis
from alignmixup.cli import build_parser, config_from_args
from analysis.experiment import COUNTED

TRIAL_KEYS = ["trial_id", "status", "config_id", "seed", "repeat", "epochs", "stopped_early", "best_val_acc",
              "last_val_acc", "test_acc", "device_hours"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory):
    """A finished ASHA sweep with 2 seeds per configuration and one errored trial, tables written."""
    return write_experiment(tmp_path_factory.mktemp("exp") / "finished", configs=4, repeats=2, grace_period=2,
                            scheduler="asha", errors={0: 3}, tables=True)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):
    """The same kind of sweep cut off half way: trials in flight, one with a half-written last line."""
    return write_experiment(tmp_path_factory.mktemp("exp") / "running", configs=4, repeats=2, grace_period=2,
                            cut=0.5, truncate=True)


def without_tables(written, tmp_path: Path) -> Path:
    copy = tmp_path / written.root.name
    shutil.copytree(written.root, copy, ignore=shutil.ignore_patterns("trials.*", "epochs.*"))
    return copy


def test_trials_table_matches_what_each_trial_reported(finished) -> None:
    trials = analysis.load(finished.root).trials.set_index("trial_id")
    assert set(trials.index) == set(finished.trials)
    for trial_id, truth in finished.trials.items():
        row = trials.loc[trial_id]
        accs = [r["val_acc"] for r in truth.rows]
        assert row["status"] == truth.status
        assert row["epochs"] == len(truth.rows)
        assert row["best_val_acc"] == max(accs) and row["last_val_acc"] == accs[-1]
        assert row["stopped_early"] == truth.stopped_by_asha  # an errored trial is no early stop
        assert row["device_hours"] == pytest.approx(truth.seconds_per_epoch * len(truth.rows) / 3600 * 2)  # 2 workers
        assert (row["config_id"], row["seed"], row["repeat"]) == tuple(truth.identity[k] for k in
                                                                        ("config_id", "seed", "repeat"))
    assert "ERROR" in set(trials["status"]) and trials["stopped_early"].any()


def test_ray_files_give_the_same_tables(finished, tmp_path: Path) -> None:
    tables, ray = analysis.load(finished.root), analysis.load(without_tables(finished, tmp_path))
    pd.testing.assert_frame_equal(ray.trials[TRIAL_KEYS], tables.trials[TRIAL_KEYS])
    pd.testing.assert_frame_equal(ray.epochs, tables.epochs)
    assert ray.hyperparameters == tables.hyperparameters == ["alpha", "mix_layers", "eps"]
    pd.testing.assert_frame_equal(analysis.leaderboard(ray), analysis.leaderboard(tables))


def test_epochs_keep_every_report_in_order(finished) -> None:
    epochs = analysis.load(finished.root).epochs
    for trial_id, truth in finished.trials.items():
        rows = epochs[epochs["trial_id"] == trial_id]
        assert list(rows["epoch"]) == [r["epoch"] for r in truth.rows]
        assert list(rows["val_acc"]) == [r["val_acc"] for r in truth.rows]
    assert {"hostname", "config", "done", "config_id", "seed"}.isdisjoint(epochs.columns)
    assert {"hp_alpha", "hp_eps", "hp_mix_layers", "lr", "train_loss", "val_loss"} <= set(epochs.columns)


def test_repeats_share_config_ids_and_hyperparameters_not_seeds(finished) -> None:
    trials = analysis.load(finished.root).trials
    groups = trials.groupby("config_id")
    assert len(groups) == 4 and (groups.size() == 2).all()
    for _, group in groups:
        assert group[["hp_alpha", "hp_eps", "hp_mix_layers"]].nunique().max() == 1
        assert group["seed"].nunique() == 2 and sorted(group["repeat"]) == [0, 1]


def test_running_sweep_warns_about_the_half_written_file_and_shows_trials_running(running) -> None:
    with pytest.warns(UserWarning, match=str(running.truncated)):
        experiment = analysis.load(running.root)
    trials = experiment.trials.set_index("trial_id")
    in_flight = running.status("RUNNING")
    assert in_flight and running.truncated.parent.name.removeprefix("trial_") in in_flight
    assert set(trials.index) == {t for t, truth in running.trials.items() if truth.rows}  # pending ones never reported
    for trial_id in in_flight:
        assert trials.loc[trial_id, "status"] == "RUNNING"
        assert not trials.loc[trial_id, "stopped_early"]
        assert trials.loc[trial_id, "epochs"] == len(running.trials[trial_id].rows)  # the torn line is left out
    assert not experiment.counted[experiment.trials["trial_id"].isin(in_flight)].any()
    assert (experiment.outcome[experiment.running] == "running").all()


def test_counted_means_terminated(finished) -> None:
    experiment = analysis.load(finished.root)
    assert (experiment.counted == (experiment.trials["status"] == COUNTED)).all()
    assert set(experiment.outcome) == {"finished", "stopped early", "error"}


def test_experiment_without_config_ids_gets_them_from_its_hyperparameters(finished, tmp_path: Path) -> None:
    copy = tmp_path / "old"
    shutil.copytree(finished.root, copy)
    trials = pd.read_parquet(copy / "trials.parquet")
    trials.drop(columns="config_id").to_parquet(copy / "trials.parquet", index=False)
    old, new = analysis.load(copy).trials, analysis.load(finished.root).trials
    pairs = set(zip(old["config_id"], new["config_id"], strict=True))
    assert len(pairs) == new["config_id"].nunique() == old["config_id"].nunique()  # the same grouping


def test_file_uri_reads_like_a_path(finished) -> None:
    by_path, by_uri = analysis.load(finished.root), analysis.load(finished.root.as_uri())
    assert by_uri.name == "finished"
    pd.testing.assert_frame_equal(by_uri.trials, by_path.trials)


def test_malformed_objectives_are_one_line(finished, tmp_path: Path) -> None:
    copy = tmp_path / "bad"
    shutil.copytree(finished.root, copy)
    sweep = json.loads((copy / "sweep.json").read_text())
    (copy / "sweep.json").write_text(json.dumps({**sweep, "objectives": [{"metric": "val_acc", "mode": "up"},
                                                                         {"metric": "val_ece", "mode": "min"}]}))
    with pytest.raises(analysis.ExperimentError, match=r"^sweep.json: objectives\[0\]: expected") as info:
        analysis.load(copy)
    assert "\n" not in str(info.value)


def test_find_experiment_takes_the_newest_sweep_under_runs_tune(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    older, newer = repo / "runs" / "tune" / "a", repo / "runs" / "tune" / "b"
    for folder, mtime in ((newer, 1_700_000_010), (older, 1_700_000_000)):  # the newer one made first
        folder.mkdir(parents=True)
        (folder / "sweep.json").write_text("{}")
        os.utime(folder / "sweep.json", (mtime, mtime))
    nested = repo / "analysis" / "notebooks"
    nested.mkdir(parents=True)
    assert analysis.find_experiment(nested) == newer  # from a working directory below the repository
    assert analysis.find_experiment(repo) == newer
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    expected = f"no experiment found: no runs/tune/\\*/sweep.json in {elsewhere} or its parents"
    with pytest.raises(analysis.ExperimentError, match=expected):
        analysis.find_experiment(elsewhere)


def test_reproduce_command_rebuilds_the_trials_configuration_and_seed(finished) -> None:
    experiment = analysis.load(finished.root)
    for trial_id in list(finished.trials)[:3]:
        argv = analysis.reproduce_command(experiment, trial_id)
        assert argv[0] == "alignmixup-train"
        cfg = config_from_args(build_parser().parse_args(argv[1:]))
        row = experiment.trials.set_index("trial_id").loc[trial_id]
        assert cfg.seed == row["seed"] and cfg.epochs == row["max_t"]
        assert cfg.alpha == pytest.approx(row["hp_alpha"]) and cfg.sinkhorn.eps == pytest.approx(row["hp_eps"])
        assert ",".join(map(str, cfg.mix_layers)) == row["hp_mix_layers"]
        assert cfg.dataset == row["dataset"] and cfg.width == row["width"]


def test_without_tunes_experiment_state_statuses_come_from_the_trial_folders(tmp_path: Path) -> None:
    written = write_experiment(tmp_path / "fifo", scheduler="fifo", configs=3, repeats=2, max_t=4, cut=0.6,
                               errors={0: 2})
    for state in written.root.glob("experiment_state-*.json"):
        state.unlink()
    trials = analysis.load(written.root).trials.set_index("trial_id")["status"]
    assert trials.to_dict() == {t: truth.status for t, truth in written.trials.items() if truth.rows}
    assert set(trials) == {"TERMINATED", "RUNNING", "ERROR"}  # finished FIFO trials log no `done` result
