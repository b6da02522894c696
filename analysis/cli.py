"""`alignmixup-analyze`: print a sweep's leaderboard and write all its tables and plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.experiment import ExperimentError, load
from analysis.leaderboard import leaderboard
from analysis.markdown import to_markdown
from analysis.report import FORMATS, write_report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: an experiment directory or URI, an output folder and a table format."""
    parser = argparse.ArgumentParser(prog="alignmixup-analyze", description=__doc__)
    parser.add_argument("experiment", metavar="EXPERIMENT_DIR", help="sweep experiment directory or URI")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: ./<experiment name>-analysis)"
    )
    parser.add_argument("--format", choices=FORMATS, default="md", help="table file format (default: md)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; 0 on success, 2 when the experiment directory is missing or is not one."""
    args = parse_args(argv)
    try:
        experiment = load(args.experiment)
    except ExperimentError as exc:
        print(f"alignmixup-analyze: error: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(f"{experiment.name}-analysis")
    print(f"{experiment.name}: {len(experiment.trials)} trials\n")
    print(to_markdown(leaderboard(experiment)))
    written = write_report(experiment, out, args.format)
    print(f"\nwrote {len(written)} files to {out}")
    return 0
