"""Figures (matplotlib, no pyplot state): learning curves, accuracy per hyperparameter, ASHA rungs."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis.asha import asha_rungs, rung_epochs, rung_results
from analysis.experiment import Experiment
from analysis.leaderboard import ACCURACY
from analysis.sensitivity import is_continuous
from tune_jobs.schema import HP_PREFIX

LOG_SCALE = frozenset({"eps", "lr", "weight_decay"})
MAX_NAMED_CURVES = 12
STOPPED = {"color": "0.55", "linestyle": "--", "linewidth": 1.0}
OUTCOME_STYLES = {
    "continued": {"color": "C0", "marker": "o"},
    "stopped": {"color": "0.5", "marker": "x"},
    "completed": {"color": "C2", "marker": "*", "s": 90},
}


def learning_curves(experiment: Experiment) -> Figure:
    """The metric per epoch of every trial; those stopped before max_t grey and dashed, x at the end."""
    metric = experiment.scheduler.metric
    stopped = set(experiment.trials.loc[~experiment.finished, "trial_id"])
    named = len(experiment.trials) - len(stopped) <= MAX_NAMED_CURVES
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    for milestone in rung_epochs(experiment.scheduler):
        ax.axvline(milestone, color="0.85", linewidth=0.8, zorder=0)
    for trial_id, curve in experiment.epochs.dropna(subset=[metric]).groupby("trial_id"):
        if trial_id in stopped:
            ax.plot(curve["epoch"], curve[metric], **STOPPED)
            ax.plot(curve["epoch"].iloc[-1], curve[metric].iloc[-1], "x", color="0.3", markersize=7)
        else:
            ax.plot(
                curve["epoch"],
                curve[metric],
                linewidth=1.8,
                marker=".",
                label=str(trial_id) if named else None,
            )
    handles, _ = ax.get_legend_handles_labels()
    handles.append(
        Line2D([], [], marker="x", markeredgecolor="0.3", label="stopped before max_t (x: stop)", **STOPPED)
    )
    ax.legend(handles=handles, fontsize="small", title="completed to max_t")
    ax.set(
        xlabel="epoch", ylabel=metric, title=f"{experiment.name}: {metric} per epoch (grey lines: ASHA rungs)"
    )
    ax.grid(alpha=0.3)
    return fig


def accuracy_vs_hyperparameters(experiment: Experiment, metric: str = ACCURACY) -> Figure:
    """One panel per hyperparameter: each trial's metric against its value (log x for eps, lr, wd)."""
    names = experiment.hyperparameters
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    trials = experiment.trials.dropna(subset=[metric])
    early = ~experiment.finished[trials.index].to_numpy()
    for ax, name in zip(axes, names, strict=False):
        values = trials[HP_PREFIX + name]
        if is_continuous(values):
            x = values.to_numpy(float)
            if name in LOG_SCALE and (x > 0).all():
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            levels = sorted(values.astype(str).unique())
            x = values.astype(str).map(levels.index).to_numpy(float)
            x += np.random.default_rng(0).uniform(-0.12, 0.12, len(x))
            ax.set_xticks(range(len(levels)), levels)
            ax.set_xlim(-0.5, len(levels) - 0.5)
        y = trials[metric].to_numpy(float)
        ax.scatter(x[~early], y[~early], color="C0", label="completed to max_t", zorder=3)
        ax.scatter(x[early], y[early], color="0.5", marker="x", label="stopped before max_t", zorder=3)
        ax.set(xlabel=name, ylabel=metric)
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(f"{experiment.name}: {metric} against each hyperparameter")
    return fig


def asha_rung_plot(experiment: Experiment) -> Figure:
    """Each trial's metric at every rung it reached, the rung's cut-off, and how many went on."""
    results, rungs = rung_results(experiment), asha_rungs(experiment)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    x = results["rung"].to_numpy(float) + np.random.default_rng(0).uniform(-0.15, 0.15, len(results))
    for outcome, style in OUTCOME_STYLES.items():
        shown = (results["outcome"] == outcome).to_numpy()
        ax.scatter(x[shown], results["value"][shown], label=outcome, zorder=3, **style)
    ax.hlines(
        rungs["cutoff"],
        rungs["rung"] - 0.3,
        rungs["rung"] + 0.3,
        color="C3",
        linewidth=2,
        label="cut-off (top 1/rf quantile)",
    )
    labels = [
        f"rung {r.rung}: epoch {r.epoch:g}\n{r.reached} reached, {r.continued} on" for r in rungs.itertuples()
    ]
    ax.set_xticks(rungs["rung"], labels)
    if rungs.empty:
        ax.text(0.5, 0.5, "no ASHA rungs (the scheduler stops no trial)", ha="center", transform=ax.transAxes)
    ax.set(ylabel=experiment.scheduler.metric, title=f"{experiment.name}: ASHA rungs")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    return fig
