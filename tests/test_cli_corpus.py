"""The four command lines agree: every case that once cost a user a minute (issue 14's list), side by side.

Each bad input exits with code 2 and prints one line on stderr that names the flag or key, with no traceback; the
good cases (--version, --help, a bare alignmixup-train) say what they should. The cases run in-process through
each CLI's `main`, as the console scripts do, and a closed pipe runs through a real shell pipeline.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.experiments import write_experiment

from alignmixup import __version__
from alignmixup.cli import build_parser, config_from_args
from alignmixup.cli import main as train_main
from analysis.cli import main as analyze_main
from cluster.submit import main as cluster_main
from tune_jobs.cli import main as tune_main

REPO = Path(__file__).resolve().parents[1]
MAINS: dict[str, Callable[[list[str]], int]] = {
    "alignmixup-train": train_main, "alignmixup-tune": tune_main, "alignmixup-analyze": analyze_main,
    "alignmixup-cluster": cluster_main,
}
SWEEP = """\
train: {dataset: digits, width: 0.125}
search: {alpha: {loguniform: [0.5, 2.0]}}
scheduler: {kind: asha, max_t: 4, grace_period: 1}
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished synthetic sweep (no Ray) for the analysis cases."""
    return write_experiment(tmp_path_factory.mktemp("corpus") / "sweep", configs=2, repeats=1, max_t=2,
                            tables=True).root


def sweep_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return str(path)


# case -> (program, arguments built from tmp_path and the experiment, what the one line must contain)
BAD: dict[str, tuple[str, Callable[[Path, Path], list[str]], str]] = {
    "cluster: a preset that does not exist": (
        "alignmixup-cluster", lambda t, e: ["submit", "no-such-preset", "--dry-run"], "no-such-preset"),
    "cluster: an unknown command": ("alignmixup-cluster", lambda t, e: ["launch"], "launch"),
    "train: a prefix of --epochs": ("alignmixup-train", lambda t, e: ["--epoch", "3"], "--epoch"),
    "train: a batch larger than the training split": (
        "alignmixup-train", lambda t, e: ["--batch-size", "100000000", "--output-dir", str(t / "o")], "--batch-size"),
    "analyze: the old --out flag": ("alignmixup-analyze", lambda t, e: [str(e), "--out", str(t)], "--out"),
    "analyze: an output folder under a file": (
        "alignmixup-analyze", lambda t, e: [str(e), "--output-dir", str(_file(t) / "x")], "--output-dir"),
    "tune: a misspelt top-level key": (
        "alignmixup-tune", lambda t, e: ["run", sweep_file(t, SWEEP.replace("scheduler:", "schedular:"))],
        "did you mean scheduler"),
    "tune: a tab in the YAML": (
        "alignmixup-tune", lambda t, e: ["run", sweep_file(t, SWEEP + "seed:\t3\n")], "line 4, column 6"),
    "tune: a --set that is no key path": (
        "alignmixup-tune", lambda t, e: ["run", sweep_file(t, SWEEP), "--set", "width"], "--set"),
    "tune: a prefix of --num-samples": (
        "alignmixup-tune", lambda t, e: ["run", sweep_file(t, SWEEP), "--num", "3"], "--num"),
}


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_exit_2_and_one_line_naming_it(case: str, experiment: Path, tmp_path: Path, capsys) -> None:
    program, make_args, named = BAD[case]
    assert MAINS[program](make_args(tmp_path, experiment)) == 2
    out = capsys.readouterr()
    err = out.err.strip()
    assert err.startswith(f"{program}: ") and "\n" not in err and named in err, err
    assert "Traceback" not in out.err + out.out
    assert not (tmp_path / "o").exists()  # nothing half-written


@pytest.mark.parametrize("program", list(MAINS))
def test_every_program_has_version_and_defaults_in_help(program: str, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        MAINS[program](["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"{program} {__version__}"
    with pytest.raises(SystemExit):
        MAINS[program](["--help"])
    shown = capsys.readouterr().out
    assert "-h, --help" in shown
    if program == "alignmixup-train":
        assert "(default: 8492)" in shown and "(default: 0.1)" in shown  # --seed, --eps


def test_a_bare_alignmixup_train_is_the_quick_digits_run() -> None:
    cfg = config_from_args(build_parser().parse_args([]))
    assert (cfg.dataset, cfg.epochs, cfg.width) == ("digits", 15, 0.25)


def test_a_closed_pipe_ends_quietly() -> None:
    """`alignmixup-tune presets | head -1`: the reader goes away, the writer exits without a BrokenPipe trace."""
    script = f"{sys.executable} -m tune_jobs presets | head -1; exit ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.stdout.count("\n") == 1 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    assert proc.returncode in (0, 141), proc.stderr  # nothing to report, or the shell's SIGPIPE status
