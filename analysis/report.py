"""Every table and plot of an experiment, computed together and written to one folder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.asha import asha_rungs
from analysis.cost import cost_by_trial, cost_summary
from analysis.experiment import Experiment
from analysis.leaderboard import leaderboard
from analysis.markdown import to_markdown
from analysis.plots import accuracy_vs_hyperparameters, asha_rung_plot, learning_curves
from analysis.published import published_comparison
from analysis.sensitivity import rank_correlation, sensitivity

FORMATS = ("md", "csv", "parquet")


def tables(experiment: Experiment) -> dict[str, pd.DataFrame]:
    """All tables by file stem: the full leaderboard, sensitivity, rungs, cost and the published ones."""
    return {
        "leaderboard": leaderboard(experiment, k=None),
        "sensitivity": sensitivity(experiment),
        "rank_correlation": rank_correlation(experiment),
        "asha_rungs": asha_rungs(experiment),
        "cost_by_trial": cost_by_trial(experiment),
        "cost_summary": cost_summary(experiment),
        "published_comparison": published_comparison(experiment),
    }


def figures(experiment: Experiment) -> dict[str, Figure]:
    """All plots by file stem."""
    return {
        "learning_curves": learning_curves(experiment),
        "accuracy_vs_hyperparameters": accuracy_vs_hyperparameters(experiment),
        "asha_rungs": asha_rung_plot(experiment),
    }


def write_table(table: pd.DataFrame, path: Path) -> None:
    """Write one table in the format its suffix names (.md, .csv or .parquet)."""
    if path.suffix == ".md":
        path.write_text(to_markdown(table) + "\n")
    elif path.suffix == ".csv":
        table.to_csv(path, index=False)
    else:
        table.to_parquet(path, index=False)


def write_report(experiment: Experiment, out: Path, fmt: str = "md") -> list[Path]:
    """Write every table (as `fmt`) and every plot (PNG) under `out`; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, table in tables(experiment).items():
        written.append(out / f"{stem}.{fmt}")
        write_table(table, written[-1])
    for stem, figure in figures(experiment).items():
        written.append(out / f"{stem}.png")
        figure.savefig(written[-1], dpi=120)
    return written
