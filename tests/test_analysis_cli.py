"""alignmixup-analyze: the leaderboard on stdout, every table and plot on disk, exit 2 on a bad directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.image import imread

import analysis
from analysis.cli import main

TABLES = [
    "leaderboard",
    "sensitivity",
    "rank_correlation",
    "asha_rungs",
    "cost_by_trial",
    "cost_summary",
    "published_comparison",
]
PLOTS = ["learning_curves", "accuracy_vs_hyperparameters", "asha_rungs"]


def test_cli_prints_leaderboard_and_writes_tables_and_plots(
    sweep_experiment: Path, tmp_path: Path, capsys
) -> None:
    assert main([str(sweep_experiment), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    best = analysis.leaderboard(analysis.load(sweep_experiment), k=1)["trial_id"].iloc[0]
    assert "| rank | trial_id |" in out and f"| 1 | {best} |" in out
    for stem in TABLES:
        assert (tmp_path / f"{stem}.md").read_text().startswith("| ")
    for stem in PLOTS:
        png = tmp_path / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = imread(png)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 600
        assert pixels[..., :3].std() > 0.05  # drawn on, not a blank canvas


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_cli_table_formats_round_trip(sweep_experiment: Path, tmp_path: Path, fmt: str) -> None:
    assert main([str(sweep_experiment), "--out", str(tmp_path), "--format", fmt]) == 0
    path = tmp_path / f"leaderboard.{fmt}"
    written = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    expected = analysis.leaderboard(analysis.load(sweep_experiment), k=None)
    assert list(written["trial_id"]) == list(expected["trial_id"])
    assert written["best_val_acc"].tolist() == pytest.approx(expected["best_val_acc"].tolist())
    assert {p.name for p in tmp_path.iterdir()} == {f"{s}.{fmt}" for s in TABLES} | {
        f"{s}.png" for s in PLOTS
    }


def test_cli_default_out_is_named_after_the_experiment(sweep_experiment: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([str(sweep_experiment)]) == 0
    assert (tmp_path / f"{sweep_experiment.name}-analysis" / "leaderboard.md").is_file()


def test_cli_missing_directory_exits_2_naming_it(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-such-sweep"
    assert main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"alignmixup-analyze: error: {missing}: no such directory\n"


def test_cli_non_experiment_directory_exits_2_naming_it(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("not a sweep")
    (tmp_path / "subdir").mkdir()
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"alignmixup-analyze: error: {tmp_path}: not an experiment directory")
    assert err.count("\n") == 1


def test_cli_unreadable_tables_exit_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "trials.parquet").write_text("garbage")
    (tmp_path / "epochs.parquet").write_text("garbage")
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"alignmixup-analyze: error: {tmp_path}: cannot read (")


def test_python_m_analysis_exits_2_on_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "trials.csv"
    a_file.write_text("trial_id\n")
    run = subprocess.run(
        [sys.executable, "-m", "analysis", str(a_file)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert run.returncode == 2
    assert run.stderr == f"alignmixup-analyze: error: {a_file}: not a directory\n"
