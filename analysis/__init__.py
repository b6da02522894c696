"""Tables, plots and a notebook over the trial results an alignmixup sweep writes."""

from analysis.asha import asha_rungs, rung_epochs, rung_results
from analysis.cost import cost_by_trial, cost_summary
from analysis.experiment import Experiment, ExperimentError, load
from analysis.leaderboard import leaderboard
from analysis.markdown import to_markdown
from analysis.plots import accuracy_vs_hyperparameters, asha_rung_plot, learning_curves
from analysis.published import published_comparison
from analysis.report import figures, tables, write_report
from analysis.sensitivity import rank_correlation, sensitivity

__all__ = [
    "Experiment",
    "ExperimentError",
    "accuracy_vs_hyperparameters",
    "asha_rung_plot",
    "asha_rungs",
    "cost_by_trial",
    "cost_summary",
    "figures",
    "leaderboard",
    "learning_curves",
    "load",
    "published_comparison",
    "rank_correlation",
    "rung_epochs",
    "rung_results",
    "sensitivity",
    "tables",
    "to_markdown",
    "write_report",
]
