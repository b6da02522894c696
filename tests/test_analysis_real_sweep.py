"""The analysis on the shared real sweep (tests/conftest.py `sweep_experiment`: a 2-worker ASHA sweep on Ray with
repeats): the CLI reads it, ASHA's recorded decisions agree with the epochs the trials reported, and Ray's own
files give the same tables as the sweep's. The synthetic tests cover the rest without Ray."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

import analysis
from analysis.cli import main


def test_cli_reads_the_real_sweep(sweep_experiment: Path, tmp_path: Path, capsys) -> None:
    assert main([str(sweep_experiment), "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    best = analysis.leaderboard(analysis.load(sweep_experiment), k=1)["config_id"].iloc[0]
    assert f"| 1 | {best} |" in out
    assert {"leaderboard.md", "asha_rungs.md", "asha_decisions.md", "learning_curves.png", "seed_spread.png"} <= {
        p.name for p in tmp_path.iterdir()}


def test_real_decisions_agree_with_the_epochs(sweep_experiment: Path) -> None:
    decisions = pd.read_parquet(sweep_experiment / "decisions.parquet")
    epochs = pd.read_parquet(sweep_experiment / "epochs.parquet")
    trials = pd.read_parquet(sweep_experiment / "trials.parquet").set_index("trial_id")
    max_t = int(trials["max_t"].max())
    last_epoch = epochs.groupby("trial_id")["epoch"].max()
    for trial_id, last in last_epoch.items():
        mine = decisions[decisions["trial_id"] == trial_id]
        for milestone in sorted(set(decisions["milestone"]) - {max_t}):
            if last > milestone:
                assert (mine[mine["milestone"] == milestone]["decision"] == "CONTINUE").any()
        if trials.loc[trial_id, "stopped_early"]:
            assert mine.iloc[-1]["decision"] == "STOP" and mine.iloc[-1]["epoch"] == last
    table = analysis.asha_rungs(analysis.load(sweep_experiment))
    for row in table.itertuples():
        at = decisions[decisions["milestone"] == row.epoch]
        assert (row.reached, row.continued) == (len(at), (at["decision"] == "CONTINUE").sum())


def test_real_sweep_without_tables_gives_the_same_numbers(sweep_experiment: Path, tmp_path: Path) -> None:
    copy = tmp_path / "no_tables"
    shutil.copytree(sweep_experiment, copy, ignore=shutil.ignore_patterns("trials.*", "epochs.*"))
    tables, ray = analysis.load(sweep_experiment), analysis.load(copy)
    columns = ["trial_id", "config_id", "seed", "epochs", "best_val_acc", "last_val_acc", "stopped_early"]
    pd.testing.assert_frame_equal(ray.trials[columns], tables.trials[columns])
    pd.testing.assert_frame_equal(analysis.leaderboard(ray), analysis.leaderboard(tables))
    assert ray.trials["repeat"].nunique() == 2  # the sweep trains each configuration under 2 seeds
    assert analysis.configurations(tables)["n"].max() == 2  # seeds are grouped by configuration
