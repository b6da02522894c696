"""alignmixup-analyze: a sweep's leaderboard on stdout, every table and plot written to a folder.

Reads a finished, running or cut-off sweep (a local directory or an s3:// / gs:// URI). Configurations are
ranked by the mean best validation accuracy of their seeds; a 95% t-interval is given from 3 seeds up. Trials
still running or errored are listed with their status and left out of every mean. Warnings (such as a running
trial's half-written result file) go to stderr, one line each; bad input exits with code 2 and one line.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from alignmixup.console import ConfigError, Parser, add_version, run_command
from analysis.experiment import Experiment, ExperimentError, load
from analysis.report import FORMATS, write_report
from analysis.tables import RANK_BY, leaderboard, to_markdown

PROG = "alignmixup-analyze"
SHOWN = ["n", f"{RANK_BY}_mean", f"{RANK_BY}_std", "ci95_low", "ci95_high", "ci_note", "stopped_early", "epochs",
         "not_counted"]  # the leaderboard's columns on stdout after its rank and key (the file has them all)


def build_parser() -> Parser:
    """The command line: an experiment directory or URI, an output folder and a table format."""
    p = Parser(prog=PROG, description=__doc__)
    add_version(p)
    p.add_argument("experiment", metavar="EXPERIMENT_DIR", help="the sweep's experiment directory or URI")
    p.add_argument("--output-dir", type=Path, default=None,
                   help="folder for the tables and plots (default: ./<experiment name>-analysis)")
    p.add_argument("--format", choices=FORMATS, default="md", help="table file format")
    return p


def check_output_dir(path: Path) -> None:
    """ConfigError if `path` cannot be a folder: it, or the nearest of its parents that exists, is not one."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"argument --output-dir: {folder} is a file, not a folder")
            return


def summary(experiment: Experiment) -> str:
    """What the experiment holds, in two lines: trials by status, scheduler, and how the ranking counts them."""
    status = experiment.trials["status"].value_counts()
    counts = ", ".join(f"{n} {s.lower()}" for s, n in status.items())
    s = experiment.scheduler
    return (f"{experiment.name}: {len(experiment.trials)} trials of {experiment.trials['config_id'].nunique()} "
            f"configurations ({counts}); {s.kind} on {s.metric} ({s.mode}), max_t {s.max_t}\n"
            f"{'configurations' if experiment.unit == 'config_id' else 'trials'} ranked by mean {RANK_BY} over their "
            "terminated trials (n); running and errored trials are not counted")


def run(argv: Sequence[str] | None) -> int:
    """Parse, load, write the report, then print the summary and the leaderboard (last, for `| head`)."""
    args = build_parser().parse_args(argv)
    if args.output_dir is not None:
        check_output_dir(args.output_dir)
    try:
        experiment = load(args.experiment)
    except ExperimentError as exc:
        raise ConfigError(str(exc)) from None
    out = args.output_dir or Path(f"{experiment.name}-analysis")
    check_output_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"argument --output-dir: cannot create {out} ({exc.strerror})") from None
    written = write_report(experiment, out, args.format)
    print(summary(experiment) + "\n")
    board = leaderboard(experiment)
    print(to_markdown(board[["rank", experiment.unit, *SHOWN]]))
    print(f"\nwrote {len(written)} files to {out}")
    return 0


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: object = None,
                  line: str | None = None) -> None:
    """A Python warning as one line on stderr, without the source location."""
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit code 0, or 2 on bad input (one line on stderr)."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _warning_line
        return run_command(PROG, run, argv)
