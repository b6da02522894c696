"""ASHA's rungs recomputed from sweep.json: who reached each rung, and the value needed to go on."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.experiment import Experiment
from analysis.sweep import SchedulerSettings


def rung_epochs(settings: SchedulerSettings) -> list[float]:
    """The rung milestones, ascending, as Ray's AsyncHyperBandScheduler (one bracket) places them."""
    if settings.max_t is None or settings.grace_period is None or settings.reduction_factor is None:
        return []
    min_t, rf = settings.grace_period, settings.reduction_factor
    count = int(np.log(settings.max_t / min_t) / np.log(rf) + 1)
    return [min_t * rf**k for k in range(count)]


def _outcome(last_epoch: float, milestone: float, max_t: float) -> str:
    """What a trial did after a rung: went on, was stopped there, or had reached max_t."""
    if last_epoch > milestone:
        return "continued"
    return "completed" if last_epoch >= max_t else "stopped"


def rung_results(experiment: Experiment) -> pd.DataFrame:
    """One row per trial per rung it reached: the metric it reported there and what it did next."""
    settings = experiment.scheduler
    epochs = experiment.epochs.dropna(subset=[settings.metric])
    last_epoch = epochs.groupby("trial_id")["epoch"].max()
    rows = []
    for rung, milestone in enumerate(rung_epochs(settings)):
        reached = epochs[epochs["epoch"] >= milestone].groupby("trial_id").head(1)
        for trial_id, value in zip(reached["trial_id"], reached[settings.metric], strict=True):
            outcome = _outcome(last_epoch[trial_id], milestone, settings.max_t)
            rows.append(
                {"rung": rung, "epoch": milestone, "trial_id": trial_id, "value": value, "outcome": outcome}
            )
    return pd.DataFrame(rows, columns=["rung", "epoch", "trial_id", "value", "outcome"])


def cutoff(values: pd.Series, settings: SchedulerSettings) -> float:
    """The value a trial needed to continue: ASHA's top-1/reduction_factor quantile of the rung."""
    sign = 1.0 if settings.mode == "max" else -1.0
    return float(
        sign * np.nanpercentile(sign * values.to_numpy(float), (1 - 1 / settings.reduction_factor) * 100)
    )


def asha_rungs(experiment: Experiment) -> pd.DataFrame:
    """Per rung: its epoch, how many trials reached it and went on, the cut-off, and the best value."""
    settings = experiment.scheduler
    results = rung_results(experiment)
    best = "max" if settings.mode == "max" else "min"
    table = (
        results.assign(continued=results["outcome"] == "continued")
        .groupby(["rung", "epoch"])
        .agg(
            reached=("trial_id", "size"),
            continued=("continued", "sum"),
            cutoff=("value", lambda values: cutoff(values, settings)),
            best=("value", best),
        )
    )
    table.insert(0, "metric", settings.metric)
    return table.reset_index().astype({"continued": int})
