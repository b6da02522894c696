"""Every table and plot of an experiment, computed together and written to one folder.

The tables and figures that need something the experiment lacks are left out: ASHA's rungs without ASHA, the
Sinkhorn convergence when no epoch reported it, the Pareto front of a single-objective sweep, the lineage of a
sweep that is not population-based.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.experiment import Experiment
from analysis.plots import (
    accuracy_vs_hyperparameters,
    asha_rung_plot,
    learning_curves,
    pareto_plot,
    schedule_plot,
    seed_spread,
    sinkhorn_plot,
    training_curves,
)
from analysis.tables import (
    asha_rungs,
    cost_by_trial,
    cost_summary,
    exploits,
    has_donors,
    has_rungs,
    has_sinkhorn,
    leaderboard,
    lineage,
    pareto_front,
    published_comparison,
    rank_correlation,
    rung_results,
    sensitivity,
    sinkhorn_convergence,
    to_markdown,
    trial_leaderboard,
)

FORMATS = ("md", "csv", "parquet")


def tables(experiment: Experiment) -> dict[str, pd.DataFrame]:
    """All tables by file stem: configurations and trials ranked, sensitivity, rungs, cost, published numbers,
    and where the experiment has them, Sinkhorn convergence, Pareto fronts and population-based lineage."""
    out = {
        "leaderboard": leaderboard(experiment, k=None),
        "trials": trial_leaderboard(experiment, k=None),
        "sensitivity": sensitivity(experiment),
        "rank_correlation": rank_correlation(experiment),
    }
    if has_rungs(experiment):
        out["asha_rungs"] = asha_rungs(experiment)
        out["asha_decisions"] = rung_results(experiment)
    out["cost_by_trial"] = cost_by_trial(experiment)
    out["cost_summary"] = cost_summary(experiment)
    out["published_comparison"] = published_comparison(experiment)
    if has_sinkhorn(experiment):
        out["sinkhorn_convergence"] = sinkhorn_convergence(experiment)
    if experiment.objectives:
        out["pareto_trials"] = pareto_front(experiment, by="trial")
        out["pareto_configurations"] = pareto_front(experiment, by="config")
    if has_donors(experiment):
        out["pbt_exploits"] = exploits(experiment)
        out["pbt_lineage"] = lineage(experiment)
    return out


def figures(experiment: Experiment) -> dict[str, Figure]:
    """All plots by file stem (the same conditions as `tables`)."""
    out = {
        "learning_curves": learning_curves(experiment),
        "training_curves": training_curves(experiment),
        "seed_spread": seed_spread(experiment),
        "accuracy_vs_hyperparameters": accuracy_vs_hyperparameters(experiment),
    }
    if has_rungs(experiment):
        out["asha_rungs"] = asha_rung_plot(experiment)
    if has_sinkhorn(experiment):
        out["sinkhorn_convergence"] = sinkhorn_plot(experiment)
    if experiment.objectives:
        out["pareto_front"] = pareto_plot(experiment)
    if has_donors(experiment):
        out["pbt_schedules"] = schedule_plot(experiment)
    return out


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
    if fmt not in FORMATS:
        raise ValueError(f"fmt: expected one of {', '.join(FORMATS)} (got {fmt!r})")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, table in tables(experiment).items():
        written.append(out / f"{stem}.{fmt}")
        write_table(table, written[-1])
    for stem, figure in figures(experiment).items():
        written.append(out / f"{stem}.png")
        figure.savefig(written[-1], dpi=110)
    return written
