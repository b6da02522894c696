"""Figures (matplotlib Figure objects, no pyplot state): learning and loss curves, the spread over seeds, accuracy
per hyperparameter, ASHA's rungs, Sinkhorn convergence, the Pareto front and population-based schedules.

Trials are drawn by outcome everywhere: finished ones solid in their configuration's colour, running ones dotted
in that colour with an open circle at their latest epoch, early-stopped ones grey and dashed with an x where they
stopped, errored ones red dash-dot. Every trial's artists carry its trial_id as their gid.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis.experiment import Experiment
from analysis.tables import (
    RANK_BY,
    SINKHORN,
    asha_rungs,
    configurations,
    has_rungs,
    is_continuous,
    lineage_segments,
    objective_values,
    pareto_mask,
    rung_epochs,
    rung_results,
    segments,
    sinkhorn_convergence,
)
from tune_jobs.schema import HP_PREFIX

LOG_SCALE = frozenset({"eps", "lr", "weight_decay"})
MAX_NAMED = 12  # configurations named in a legend; the rest are drawn unnamed
STYLES = {  # by Experiment.outcome; None colour: the configuration's
    "finished": {"color": None, "linestyle": "-", "linewidth": 1.8},
    "running": {"color": None, "linestyle": ":", "linewidth": 1.8},
    "stopped early": {"color": "0.55", "linestyle": "--", "linewidth": 1.0},
    "ended early": {"color": "0.55", "linestyle": "--", "linewidth": 1.0},
    "error": {"color": "C3", "linestyle": "-.", "linewidth": 1.0},
}
END_MARKERS = {  # the marker at a trial's last reported epoch
    "running": {"marker": "o", "markerfacecolor": "white", "markersize": 7},
    "stopped early": {"marker": "x", "color": "0.3", "markersize": 7},
    "ended early": {"marker": "x", "color": "0.3", "markersize": 7},
    "error": {"marker": "X", "color": "C3", "markersize": 7},
}
LEGEND_TEXT = {
    "running": "running (o: latest epoch)",
    "stopped early": "stopped early (x: stop)",
    "ended early": "ended before max_t",
    "error": "error",
}
DECISION_STYLES = {
    "continued": {"color": "C0", "marker": "o"},
    "stopped": {"color": "0.5", "marker": "x"},
    "completed": {"color": "C2", "marker": "*", "s": 90},
    "running": {"color": "C1", "marker": "o", "facecolors": "none"},
    "error": {"color": "C3", "marker": "X"},
}


def config_colors(experiment: Experiment) -> dict[str, str]:
    """Configuration (by `experiment.unit`) -> a colour, in leaderboard order (the best configuration is C0)."""
    order = configurations(experiment)[experiment.unit] if len(experiment.trials) else []
    return {cid: f"C{i % 10}" for i, cid in enumerate(order)}


def _log_axis(ax: Axes, axis: str = "x") -> None:
    """A log axis with ticks at 1, 2 and 5 per decade, labelled plainly."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _curves(ax: Axes, experiment: Experiment, column: str, colors: dict[str, str], named: set[str]) -> None:
    """Every trial's `column` per epoch on `ax`, styled by outcome; a population-based trial's segments apart."""
    outcome = experiment.outcome.set_axis(experiment.trials["trial_id"])
    config = experiment.trials.set_index("trial_id", drop=False)[experiment.unit]
    labels = experiment.config_labels()
    labelled: set[str] = set()
    for trial_id, rows in experiment.epochs.dropna(subset=[column]).groupby("trial_id", sort=False):
        state, cid = outcome[trial_id], config[trial_id]
        style = {**STYLES[state]}
        if style["color"] is None:
            style["color"] = colors.get(cid, "C0")
        label = None
        if state == "finished" and cid in named and cid not in labelled:
            label = labels[cid]
            labelled.add(cid)
        for part in segments(rows):
            ax.plot(part["epoch"], part[column], gid=trial_id, label=label, **style)
            label = None
        if state in END_MARKERS:
            marker = {"color": style["color"], **END_MARKERS[state]}
            ax.plot(rows["epoch"].iloc[-1], rows[column].iloc[-1], linestyle="none", gid=trial_id, **marker)


def _outcome_handles(experiment: Experiment) -> list[Line2D]:
    """Legend entries for the outcomes other than finished that the experiment has."""
    present = set(experiment.outcome)
    handles = []
    for state, text in LEGEND_TEXT.items():
        if state in present:
            style = {**STYLES[state], "color": STYLES[state]["color"] or "C0"}
            marker = {k: v for k, v in END_MARKERS[state].items() if k != "color"}
            handles.append(Line2D([], [], label=text, markeredgecolor=style["color"], **style, **marker))
    return handles


def _rung_lines(ax: Axes, experiment: Experiment) -> None:
    results = rung_results(experiment)
    for milestone in sorted(set(results["milestone"]) or set(rung_epochs(experiment.scheduler))):
        ax.axvline(milestone, color="0.85", linewidth=0.8, zorder=0)


def learning_curves(experiment: Experiment, metric: str | None = None) -> Figure:
    """The metric (default: the scheduler's) per epoch of every trial, labelled by its hyperparameters."""
    metric = metric or experiment.scheduler.metric
    colors = config_colors(experiment)
    named = set(list(colors)[:MAX_NAMED])
    fig = Figure(figsize=(11, 5.5), layout="constrained")
    ax = fig.add_subplot()
    _rung_lines(ax, experiment)
    _curves(ax, experiment, metric, colors, named)
    handles = [*ax.get_legend_handles_labels()[0], *_outcome_handles(experiment)]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", title="finished, by configuration")
    note = " (grey lines: ASHA rungs)" if has_rungs(experiment) else ""
    if experiment.scheduler.population_based:
        note = " (a new segment after each exploit)"
    ax.set(xlabel="epoch", ylabel=metric, title=f"{experiment.name}: {metric} per epoch{note}")
    ax.grid(alpha=0.3)
    return fig


def training_curves(experiment: Experiment) -> Figure:
    """Training loss, validation loss and learning rate per epoch of every trial (the panels reported)."""
    epochs = experiment.epochs
    columns = [c for c in ("train_loss", "val_loss", "lr") if c in epochs and epochs[c].notna().any()]
    colors = config_colors(experiment)
    fig = Figure(figsize=(5 * max(1, len(columns)) + 3, 4.5), layout="constrained")
    axes = fig.subplots(1, max(1, len(columns)), squeeze=False).ravel()
    for ax, column in zip(axes, columns, strict=False):
        _curves(ax, experiment, column, colors, set(list(colors)[:MAX_NAMED]) if ax is axes[0] else set())
        ax.set(xlabel="epoch", ylabel=column, title=column)
        ax.grid(alpha=0.3)
    if not columns:
        _empty(axes[0], "no losses or learning rates reported")
    handles = [*axes[0].get_legend_handles_labels()[0], *_outcome_handles(experiment)]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", title="finished, by configuration")
    fig.suptitle(f"{experiment.name}: losses and learning rate per epoch")
    return fig


def seed_spread(experiment: Experiment, metric: str = RANK_BY, k: int = 20) -> Figure:
    """The top `k` configurations: each seed's metric (filled: counted; hollow: running or errored, not counted),
    the mean over counted seeds, and its 95% t-interval where n >= 3; n under each."""
    configs = configurations(experiment, metric).head(k)
    trials = experiment.trials.assign(counted=experiment.counted, outcome=experiment.outcome)
    labels = experiment.config_labels()
    fig = Figure(figsize=(max(7, 0.8 * len(configs) + 3), 5.5), layout="constrained")
    ax = fig.add_subplot()
    for x, row in enumerate(configs.itertuples(index=False)):
        seeds = trials[trials[experiment.unit] == getattr(row, experiment.unit)]
        jitter = np.linspace(-0.15, 0.15, len(seeds)) if len(seeds) > 1 else np.zeros(1)
        for dx, seed in zip(jitter, seeds.itertuples(index=False), strict=True):
            color = "C0" if seed.outcome == "finished" else STYLES[seed.outcome]["color"] or "C1"
            ax.scatter(x + dx, getattr(seed, metric), color=color, facecolors=color if seed.counted else "none",
                       zorder=3, gid=seed.trial_id)
        mean = getattr(row, f"{metric}_mean")
        ax.hlines(mean, x - 0.3, x + 0.3, color="k", linewidth=2, zorder=4, gid="mean")
        if not math.isnan(row.ci95_low):
            ax.vlines(x, row.ci95_low, row.ci95_high, color="k", linewidth=1.2, zorder=2, gid="ci95")
        ax.annotate(f"n={row.n}", (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                    textcoords="offset points", ha="center", fontsize="small")
    ax.set_xticks(range(len(configs)), [labels.get(c, c).replace(" ", "\n") for c in configs[experiment.unit]],
                  fontsize="x-small")
    handles = [Line2D([], [], color="C0", marker="o", linestyle="none", label="seed, ran max_t"),
               Line2D([], [], color="0.55", marker="o", linestyle="none", label="seed, stopped early"),
               Line2D([], [], color="C1", marker="o", markerfacecolor="none", linestyle="none",
                      label="seed running or errored (not counted)"),
               Line2D([], [], color="k", linewidth=2, label="mean of counted seeds"),
               Line2D([], [], color="k", linewidth=1.2, label="95% t-interval (only n >= 3)")]
    ax.legend(handles=handles, fontsize="small")
    if configs.empty:
        _empty(ax, "no configurations")
    ax.set(ylabel=metric, title=f"{experiment.name}: {metric} over seeds, per configuration (best first)")
    ax.grid(alpha=0.3, axis="y")
    return fig


def accuracy_vs_hyperparameters(experiment: Experiment, metric: str = RANK_BY) -> Figure:
    """One panel per hyperparameter: each trial's metric against its value, and each configuration's mean over
    its counted seeds with a bar of ± one standard deviation (n >= 2). Log x for eps, lr, weight decay."""
    names = experiment.hyperparameters
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.6 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    trials = experiment.trials.assign(outcome=experiment.outcome, counted=experiment.counted)
    trials = trials.dropna(subset=[metric])
    configs = configurations(experiment, metric)
    configs = configs[configs["n"] > 0] if not configs.empty else configs
    for ax, name in zip(axes, names, strict=False):
        column = HP_PREFIX + name
        values = pd.concat([trials[column], configs[column]])
        if is_continuous(values):
            position = lambda v: v.to_numpy(float)
            if name in LOG_SCALE and (values.to_numpy(float) > 0).all():
                _log_axis(ax)
        else:
            levels = sorted(values.astype(str).unique())
            position = lambda v, levels=levels: v.astype(str).map(levels.index).to_numpy(float)
            ax.set_xticks(range(len(levels)), levels)
            ax.set_xlim(-0.5, len(levels) - 0.5)
        x = position(trials[column])
        for state, style in (("finished", {"color": "C0"}), ("stopped early", {"color": "0.5", "marker": "x"})):
            shown = (trials["outcome"] == state).to_numpy()
            ax.scatter(x[shown], trials[metric][shown], s=16, label=f"trial, {state}", zorder=3, **style)
        shown = (~trials["counted"]).to_numpy()
        ax.scatter(x[shown], trials[metric][shown], s=16, facecolors="none", edgecolors="C1", zorder=3,
                   label="trial running or errored (not counted)")
        ax.errorbar(position(configs[column]), configs[f"{metric}_mean"], yerr=configs[f"{metric}_std"].fillna(0),
                    fmt="D", color="k", markersize=5, capsize=3, zorder=4, label="configuration mean ± std")
        ax.set(xlabel=name, ylabel=metric)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_axis_off()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize="small")
    fig.suptitle(f"{experiment.name}: {metric} against each hyperparameter")
    return fig


def asha_rung_plot(experiment: Experiment) -> Figure:
    """Each trial's metric at every rung it reached, coloured by ASHA's decision, with the cut-off it was compared
    with (a red tick joined to the point; the rung's recomputed final cut-off when decisions were not kept)."""
    results, rungs = rung_results(experiment), asha_rungs(experiment)
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(results))
    x = results["rung"].to_numpy(float) + jitter
    for outcome, style in DECISION_STYLES.items():
        shown = (results["outcome"] == outcome).to_numpy()
        if shown.any():
            ax.scatter(x[shown], results["value"][shown], label=outcome, zorder=3, **style)
    if experiment.decisions is not None:
        faced = results["cutoff"].notna().to_numpy()
        ax.vlines(x[faced], results["value"][faced], results["cutoff"][faced], color="C3", linewidth=0.6, alpha=0.6)
        ax.scatter(x[faced], results["cutoff"][faced], marker="_", s=120, color="C3", zorder=4,
                   label="cut-off it was compared with")
    elif not rungs.empty:
        ax.hlines(rungs["cutoff_min"], rungs["rung"] - 0.3, rungs["rung"] + 0.3, color="C3", linewidth=2,
                  label="cut-off recomputed once all arrived")
    max_t = experiment.scheduler.max_t or math.inf
    labels = [f"rung {r.rung}: epoch {r.epoch:g}\n{r.reached} reached, {r.continued} on" if r.epoch < max_t
              else f"max_t: epoch {r.epoch:g}\n{r.completed} completed" for r in rungs.itertuples()]
    ax.set_xticks(rungs["rung"], labels)
    if rungs.empty:
        _empty(ax, f"no ASHA rungs ({experiment.scheduler.kind} stops no trial at rungs)")
    source = "ASHA's recorded decisions" if experiment.decisions is not None else "recomputed (no decisions.parquet)"
    ax.set(ylabel=experiment.scheduler.metric, title=f"{experiment.name}: ASHA rungs, {source}")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    return fig


def sinkhorn_plot(experiment: Experiment) -> Figure:
    """Per trial, against eps (log): the mean Sinkhorn iterations and the mean marginal error |R·1 - 1| over
    its epochs with an aligned batch, coloured by mixing layers."""
    table = sinkhorn_convergence(experiment)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    iters, err = SINKHORN
    layers = sorted(table["hp_mix_layers"].astype(str).unique())
    for i, group in enumerate(layers):
        rows = table[table["hp_mix_layers"].astype(str) == group]
        for ax, column in zip(axes, (f"{iters}_mean", f"{err}_mean"), strict=True):
            ax.scatter(rows["hp_eps"], rows[column], color=f"C{i % 10}", label=f"mix_layers {group}", zorder=3)
    for ax, column, text in zip(axes, SINKHORN, ("iterations per aligned batch", "marginal error |R·1 − 1|"),
                                strict=True):
        if table.empty:
            _empty(ax, "Sinkhorn convergence not reported")
        else:
            _log_axis(ax)
        ax.set(xlabel="eps", ylabel=f"{column} (mean over epochs)", title=text)
        ax.grid(alpha=0.3)
    if not table.empty and (table[f"{err}_mean"] > 0).all():
        axes[1].set_yscale("log")
    if layers:
        axes[0].legend(fontsize="small")
    fig.suptitle(f"{experiment.name}: Sinkhorn convergence per trial against eps")
    return fig


def _axis_label(name: str, mode: str) -> str:
    return f"{name} ({'higher' if mode == 'max' else 'lower'} is better)"


def pareto_plot(experiment: Experiment) -> Figure:
    """The counted trials' objective values and the non-dominated ones: for two objectives a scatter with the
    front joined (and configuration means with theirs when seeds repeat); for more, every pair of objectives."""
    objs = experiment.objectives
    values = objective_values(experiment)
    values = values[values["counted"].astype(bool)] if not values.empty else values
    pairs = list(combinations(range(len(objs)), 2))
    cols = min(3, max(1, len(pairs)))
    fig = Figure(figsize=(5.5 * cols, 4.8 * math.ceil(max(1, len(pairs)) / cols)), layout="constrained")
    axes = fig.subplots(math.ceil(max(1, len(pairs)) / cols), cols, squeeze=False).ravel()
    if values.empty or len(objs) < 2:
        _empty(axes[0], "no objectives" if len(objs) < 2 else "no counted trial reported every objective")
        return fig
    signed = np.column_stack([o.sign * values[o.metric].to_numpy(float) for o in objs])
    front = pareto_mask(signed)
    configs = values.groupby(experiment.unit)[[o.metric for o in objs]].agg(["mean", "size"])
    repeated = (configs.xs("size", axis=1, level=1) > 1).any(axis=None)
    for ax, (i, j) in zip(axes, pairs, strict=False):
        a, b = objs[i], objs[j]
        ax.scatter(values[a.metric][~front], values[b.metric][~front], color="0.6", s=18, label="dominated trial")
        ax.scatter(values[a.metric][front], values[b.metric][front], color="C0", s=30, zorder=3,
                   label="non-dominated trial")
        if len(objs) == 2:
            line = values[front].sort_values(a.metric)
            ax.plot(line[a.metric], line[b.metric], color="C0", linewidth=1.2, gid="trial front")
            if repeated:
                means = configs.xs("mean", axis=1, level=1)
                on = pareto_mask(np.column_stack([o.sign * means[o.metric].to_numpy(float) for o in objs]))
                ax.scatter(means[a.metric], means[b.metric], marker="D", color="k", s=24, zorder=4,
                           label="configuration mean")
                ordered = means[on].sort_values(a.metric)
                ax.plot(ordered[a.metric], ordered[b.metric], color="k", linestyle="--", linewidth=1,
                        gid="configuration front", label="front of configuration means")
        ax.set(xlabel=_axis_label(a.metric, a.mode), ylabel=_axis_label(b.metric, b.mode))
        ax.grid(alpha=0.3)
    for ax in axes[len(pairs):]:
        ax.set_axis_off()
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{experiment.name}: Pareto front of {', '.join(o.metric for o in objs)} "
                 f"({int(front.sum())} of {len(values)} trials non-dominated)")
    return fig


def _step(ax: Axes, rows: pd.DataFrame, column: str, **style: object) -> None:
    """A hyperparameter as steps: the value a row reports held during its epoch, from epoch - 1 to epoch."""
    x = np.concatenate([[rows["epoch"].iloc[0] - 1], rows["epoch"].to_numpy(float)])
    y = np.concatenate([[rows[column].iloc[0]], rows[column].to_numpy(float)])
    ax.step(x, y, where="pre", **style)


def schedule_plot(experiment: Experiment, trial_id: str | None = None) -> Figure:
    """Population-based training: each trial's hyperparameters per epoch as steps (a new segment after each
    exploit, a dot where it started from a donor), and the lineage of the best trial's model in black."""
    names = [c for c in (f"{HP_PREFIX}alpha", f"{HP_PREFIX}eps", f"{HP_PREFIX}lr") if c in experiment.epochs
             and experiment.epochs.groupby("trial_id")[c].nunique().max() > 1]
    names = names or [c for c in (f"{HP_PREFIX}alpha", f"{HP_PREFIX}eps") if c in experiment.epochs]
    fig = Figure(figsize=(6 * max(1, len(names)), 4.5), layout="constrained")
    axes = fig.subplots(1, max(1, len(names)), squeeze=False).ravel()
    chain = lineage_segments(experiment, trial_id)
    ids = list(dict.fromkeys(experiment.epochs["trial_id"]))
    for ax, column in zip(axes, names, strict=False):
        for k, (tid, rows) in enumerate(experiment.epochs.groupby("trial_id", sort=False)):
            color = f"C{ids.index(tid) % 10}"
            for n, part in enumerate(segments(rows)):
                _step(ax, part, column, color=color, linewidth=1, alpha=0.7, gid=tid,
                      label=tid if k < MAX_NAMED and n == 0 else None)
                if n > 0:  # a segment after the first starts from a donor's checkpoint
                    ax.plot(part["epoch"].iloc[0] - 1, part[column].iloc[0], "o", color=color, markersize=4, gid=tid)
        for n, part in enumerate(chain):
            _step(ax, part, column, color="k", linewidth=3, alpha=0.55, gid="lineage",
                  label=f"lineage of {chain[-1]['trial_id'].iloc[0]}" if n == 0 else None)
        if column.removeprefix(HP_PREFIX) in LOG_SCALE or column == f"{HP_PREFIX}alpha":
            _log_axis(ax, "y")
        ax.set(xlabel="epoch", ylabel=column.removeprefix(HP_PREFIX), title=column.removeprefix(HP_PREFIX))
        ax.grid(alpha=0.3)
    steps = " <- ".join(f"{p['trial_id'].iloc[0]}@{int(p['epoch'].iloc[0])}-{int(p['epoch'].iloc[-1])}"
                        for p in chain[::-1])
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="x-small")
    fig.suptitle(f"{experiment.name}: {experiment.scheduler.kind} schedules; lineage {steps}", fontsize="medium")
    return fig

