"""How accuracy depends on each hyperparameter: grouped means with 95% CIs and rank correlations."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.experiment import Experiment
from analysis.leaderboard import ACCURACY
from tune_jobs.schema import HP_PREFIX


def is_continuous(values: pd.Series) -> bool:
    """Whether a hyperparameter is numeric (binned, correlated) rather than categorical (grouped)."""
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _label(value: object) -> str:
    """A short text label for one hyperparameter value."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _levels(values: pd.Series, bins: int) -> pd.Series:
    """Ordered group labels: each value when categorical or few-valued, else its quantile bin."""
    if is_continuous(values) and values.nunique() > bins:
        cut = pd.qcut(values, bins, duplicates="drop")
        return cut.cat.rename_categories([f"[{iv.left:.3g}, {iv.right:.3g}]" for iv in cut.cat.categories])
    labels = values.map(_label)
    order = dict.fromkeys(_label(v) for v in sorted(values.dropna().unique()))
    return labels.astype(pd.CategoricalDtype(list(order), ordered=True))


def _mean_ci(accuracy: pd.Series) -> pd.Series:
    """n, mean, std and the 95% t-interval of the mean (NaN bounds with fewer than 2 trials)."""
    n, mean, std = len(accuracy), accuracy.mean(), accuracy.std()
    half = stats.t.ppf(0.975, n - 1) * std / np.sqrt(n) if n > 1 else np.nan
    return pd.Series({"n": n, "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half})


def sensitivity(experiment: Experiment, metric: str = ACCURACY, bins: int = 4) -> pd.DataFrame:
    """Per hyperparameter and level (category or quantile bin): n, mean metric and its 95% CI."""
    trials = experiment.trials.dropna(subset=[metric])
    parts = []
    for name in experiment.hyperparameters:
        values = trials[HP_PREFIX + name]
        grouped = trials[metric].groupby(_levels(values, bins), observed=True).apply(_mean_ci).unstack()
        grouped.insert(0, "kind", "continuous" if is_continuous(values) else "categorical")
        grouped.insert(0, "hyperparameter", name)
        parts.append(grouped.rename_axis("level").reset_index())
    columns = ["hyperparameter", "level", "kind", "n", "mean", "std", "ci95_low", "ci95_high"]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    return table[columns].astype({"n": int})


def rank_correlation(experiment: Experiment, metric: str = ACCURACY) -> pd.DataFrame:
    """Spearman's rank correlation of each numeric hyperparameter with the metric, with its p-value."""
    trials = experiment.trials.dropna(subset=[metric])
    rows = []
    for name in experiment.hyperparameters:
        values = trials[HP_PREFIX + name]
        if not is_continuous(values):
            continue
        varied = values.nunique() > 1 and trials[metric].nunique() > 1
        rho, p = stats.spearmanr(values, trials[metric]) if varied else (np.nan, np.nan)
        rows.append({"hyperparameter": name, "n": len(values), "spearman_rho": rho, "p_value": p})
    return pd.DataFrame(rows, columns=["hyperparameter", "n", "spearman_rho", "p_value"])
