"""alignmixup-analyze: the leaderboard on stdout, every table and plot on disk, exit 2 and one line on bad input,
running sweeps read with one warning line per torn file, quiet when the reader closes the pipe."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers.experiments import write_experiment
from matplotlib.image import imread

import analysis
from alignmixup import __version__
from analysis.cli import main
from analysis.report import write_table

REPO = Path(__file__).resolve().parents[1]
TABLES = ["leaderboard", "trials", "sensitivity", "rank_correlation", "asha_rungs", "asha_decisions", "cost_by_trial",
          "cost_summary", "published_comparison", "sinkhorn_convergence", "pareto_trials", "pareto_configurations"]
PLOTS = ["learning_curves", "training_curves", "seed_spread", "accuracy_vs_hyperparameters", "asha_rungs",
         "sinkhorn_convergence", "pareto_front"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished ASHA sweep with repeats, two objectives and Sinkhorn convergence, tables written."""
    return write_experiment(tmp_path_factory.mktemp("cli") / "sweep", configs=4, repeats=2, grace_period=2,
                            objectives=[("val_acc", "max"), ("val_ece", "min")], eval_every=2, sinkhorn=True,
                            tables=True).root


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):
    """A copy of a sweep still running: no tables, trials RUNNING in Tune's state, one half-written last line."""
    return write_experiment(tmp_path_factory.mktemp("cli") / "live", configs=4, repeats=2, grace_period=2, cut=0.5,
                            truncate=True)


def analyze(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`python -m analysis ...` as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "analysis", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_cli_prints_the_leaderboard_and_writes_every_table_and_plot(finished: Path, tmp_path: Path, capsys) -> None:
    assert main([str(finished), "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    board = analysis.leaderboard(analysis.load(finished))
    assert "| rank | config_id | n | best_val_acc_mean |" in out
    top = board.iloc[0]
    assert f"| 1 | {top['config_id']} | {top['n']} | {top['best_val_acc_mean']:.4g} |" in out
    assert out.startswith("sweep: 8 trials of 4 configurations (8 terminated); asha on val_acc (max), max_t 8\n")
    assert {p.name for p in tmp_path.iterdir()} == {f"{s}.md" for s in TABLES} | {f"{s}.png" for s in PLOTS}
    for stem in TABLES:
        assert (tmp_path / f"{stem}.md").read_text().startswith("| ")
    for stem in PLOTS:
        pixels = imread(tmp_path / f"{stem}.png")
        assert pixels.shape[0] > 300 and pixels.shape[1] > 500
        assert pixels[..., :3].std() > 0.05  # drawn on, not a blank canvas


def test_cli_writes_csv_tables(finished: Path, tmp_path: Path) -> None:
    assert main([str(finished), "--output-dir", str(tmp_path), "--format", "csv"]) == 0
    written = pd.read_csv(tmp_path / "leaderboard.csv")
    expected = analysis.leaderboard(analysis.load(finished), k=None)
    assert list(written["config_id"]) == list(expected["config_id"])
    assert written["best_val_acc_mean"].tolist() == pytest.approx(expected["best_val_acc_mean"].tolist())
    assert {p.suffix for p in tmp_path.iterdir()} == {".csv", ".png"}


def test_parquet_tables_round_trip(finished: Path, tmp_path: Path) -> None:
    table = analysis.leaderboard(analysis.load(finished), k=None)
    write_table(table, tmp_path / "leaderboard.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "leaderboard.parquet"), table)


def test_cli_version_and_help(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"alignmixup-analyze {__version__}\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--output-dir OUTPUT_DIR" in text and "(default: md)" in text and "--out " not in text


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda tmp: None, lambda tmp, exp: [tmp / "no-such-sweep"], "{tmp}/no-such-sweep: no such directory"),
        (lambda tmp: (tmp / "notes.txt").write_text("x"), lambda tmp, exp: [tmp],
         "{tmp}: not an experiment directory (no sweep.json; alignmixup-tune run makes one)"),
        (lambda tmp: (tmp / "a.csv").write_text("x"), lambda tmp, exp: [tmp / "a.csv"], "{tmp}/a.csv: not a directory"),
        (lambda tmp: (tmp / "f").write_text("x"), lambda tmp, exp: [exp, "--output-dir", tmp / "f" / "out"],
         "argument --output-dir: {tmp}/f is a file, not a folder"),
        (lambda tmp: None, lambda tmp, exp: [exp, "--format", "xlsx"],
         "argument --format: invalid choice: 'xlsx' (choose from "),
        (lambda tmp: None, lambda tmp, exp: [exp, "--out", tmp], "unrecognized arguments: --out {tmp}"),
    ],
    ids=["missing", "not-an-experiment", "a-file", "output-dir-under-a-file", "unknown-format", "old-out-flag"],
)
def test_cli_bad_input_exits_2_with_one_line(finished: Path, tmp_path: Path, capsys, make, args, message) -> None:
    make(tmp_path)
    assert main([str(a) for a in args(tmp_path, finished)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"alignmixup-analyze: error: {message.format(tmp=tmp_path)}")
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n") and captured.out == ""


def test_cli_unreadable_tables_exit_2(finished: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "broken"
    shutil.copytree(finished, copy)
    (copy / "trials.parquet").write_text("garbage")
    assert main([str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"alignmixup-analyze: error: {copy}: cannot read (") and err.count("\n") == 1


def test_cli_on_a_running_sweep_warns_in_one_line_and_shows_the_running_trials(running, tmp_path: Path) -> None:
    run = analyze(running.root, cwd=tmp_path)  # the report goes to ./<experiment name>-analysis
    out = tmp_path / "live-analysis"
    assert run.returncode == 0, run.stderr
    assert run.stderr == (f"alignmixup-analyze: warning: {running.truncated}: its last line is incomplete (still "
                          "being written?); left out\n")
    in_flight = running.status("RUNNING")
    assert in_flight and all(f"{t} (RUNNING)" in run.stdout for t in in_flight)
    trials = (out / "trials.md").read_text()
    for trial_id in in_flight:
        line = next(line for line in trials.splitlines() if f"| {trial_id} |" in line)
        assert "| RUNNING | False |" in line  # status RUNNING, not counted
    costs = (out / "cost_summary.md").read_text()
    assert f"{len(in_flight)} trial(s) still running" in costs
    basis = (out / "cost_by_trial.md").read_text()
    assert basis.count("running: max_t extrapolated from its") == len(in_flight)


def test_cli_ends_quietly_when_the_reader_closes_the_pipe(finished: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "analysis", str(finished), "--output-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env)
    proc.stdout.close()  # like `| head` that has read enough, before anything was printed
    assert proc.wait(timeout=300) == 0
    assert proc.stderr.read() == b""
    assert (tmp_path / "leaderboard.md").is_file()  # the report is written before anything is printed
