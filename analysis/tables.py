"""Every table of an experiment, as pandas DataFrames: leaderboards over seeds, sensitivity, ASHA's rungs, a
comparison at a common epoch, cost, the published numbers, Sinkhorn convergence, the Pareto front and the
lineage of population-based trials; and Markdown rendering.

Statistics count a trial only when it has ended normally (`Experiment.counted`: status TERMINATED, whether it
ran to max_t or was stopped early); running and errored trials are listed with their status, never averaged.
Seeds of one configuration (equal `config_id`) are repeated measurements of it: the per-configuration tables
give their mean, standard deviation and n, and a 95% t-interval of the mean only from n >= 3 (MIN_N_FOR_CI).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import pandas as pd
from scipy import stats

from alignmixup.names import SINKHORN_COLUMNS
from alignmixup.presets import PUBLISHED_TOP1, RELEASE_CURVES, recipe_name
from analysis.experiment import DONOR, DONOR_EPOCH, Experiment, SchedulerSettings
from tune_jobs.schema import (
    HP_PREFIX,
    REPORTED_AT,
    UNFINISHED,
    milestones,
    objective_rows,
    pareto_mask,
)

RANK_BY = "best_val_acc"  # what trials and configurations are ranked by (higher is better): the trainer's selection
MIN_N_FOR_CI = 3  # below this many counted trials a t-interval is not given (n = 2: t = 12.7, no information)
TOO_SMALL = "n too small"
SINKHORN = SINKHORN_COLUMNS
TRIAL_RESULTS = ["best_val_acc", "last_val_acc", "test_acc", "epochs", "stopped_early", "device_hours"]


# ----------------------------------------------------------------------------------- statistics


def mean_interval(values: Sequence[float] | pd.Series) -> dict[str, float | int | str]:
    """n, mean, standard deviation of the non-missing values, and the 95% t-interval of the mean when
    n >= MIN_N_FOR_CI (NaN bounds and ci_note "n too small" otherwise)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    low = high = math.nan
    note = TOO_SMALL if n else "no counted trial"
    if n >= MIN_N_FOR_CI:
        half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
        low, high, note = mean - half, mean + half, ""
    return {"n": n, "mean": mean, "std": std, "ci95_low": low, "ci95_high": high, "ci_note": note}


def _order(values: pd.Series, mode: str) -> pd.Series:
    """Sort keys that put the best value first and missing values last."""
    return -values if mode == "max" else values


# ----------------------------------------------------------------------------------- leaderboards


def configurations(experiment: Experiment, metric: str = RANK_BY, mode: str = "max") -> pd.DataFrame:
    """One row per configuration (by `experiment.unit`: config_id, or trial_id under population-based training),
    best mean first: its hyperparameters, n counted trials, the mean, standard deviation and 95% t-interval
    (n >= 3) of their `metric`, the mean test_acc of the test_n of them that measured it (those trained to the
    end), its trials and seeds, the trials not counted (with their status), early stops, the epochs its counted
    trials ran, and its device-hours."""
    trials, counted, unit = experiment.trials, experiment.counted, experiment.unit
    rows = []
    for key, group in trials.groupby(unit, sort=False):
        used = group[counted[group.index]]
        summary = mean_interval(used[metric])
        others = group[~counted[group.index]]
        epochs = sorted(set(used["epochs"]))
        rows.append({
            unit: key,
            **{c: group[c].iloc[0] for c in experiment.hp_columns},
            "n": summary["n"],
            f"{metric}_mean": summary["mean"],
            f"{metric}_std": summary["std"],
            "ci95_low": summary["ci95_low"],
            "ci95_high": summary["ci95_high"],
            "ci_note": summary["ci_note"],
            "test_acc_mean": used["test_acc"].mean() if "test_acc" in used else math.nan,  # over test_n trials
            "test_n": int(used["test_acc"].notna().sum()) if "test_acc" in used else 0,
            "stopped_early": int(used["stopped_early"].sum()),
            "epochs": "" if not epochs else f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}",
            "trials": ",".join(group["trial_id"]),
            "seeds": ",".join("" if pd.isna(s) else str(s) for s in group["seed"]),
            "not_counted": ",".join(f"{t} ({s})" for t, s in zip(others["trial_id"], others["status"], strict=True)),
            "device_hours": group["device_hours"].sum(),
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    key = _order(table[f"{metric}_mean"], mode)
    table = table.assign(_key=key).sort_values(["_key", unit], na_position="last").drop(columns="_key")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True).astype({"n": int})


def leaderboard(experiment: Experiment, k: int | None = 10) -> pd.DataFrame:
    """The top `k` configurations (all when k is None) by their mean best validation accuracy over seeds (each
    trial its own configuration under population-based training: see `configurations`)."""
    return configurations(experiment).head(k)


def trial_leaderboard(experiment: Experiment, k: int | None = 10) -> pd.DataFrame:
    """The top `k` trials (all when k is None) by best validation accuracy, each with its status and whether it
    is counted in the per-configuration statistics."""
    trials = experiment.trials.assign(counted=experiment.counted)
    ranked = trials.sort_values([RANK_BY, "trial_id"], ascending=[False, True], na_position="last")
    columns = ["trial_id", "config_id", "seed", "repeat", "status", "counted", *experiment.hp_columns, *TRIAL_RESULTS]
    board = ranked.reindex(columns=columns).head(k)
    board.insert(0, "rank", range(1, len(board) + 1))
    return board.reset_index(drop=True)


# ----------------------------------------------------------------------------------- sensitivity


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


def sensitivity(experiment: Experiment, metric: str = RANK_BY, bins: int = 4) -> pd.DataFrame:
    """Per hyperparameter and level (category or quantile bin): the configurations there (n), their trials, and
    the mean, standard deviation and 95% t-interval (n >= 3) of the configurations' mean `metric`.

    The unit is the configuration, not the trial: its seeds measure one point of the search space, so they are
    averaged first; configurations with no counted trial are left out.
    """
    configs = configurations(experiment, metric)
    configs = configs[configs["n"] > 0] if not configs.empty else configs
    columns = ["hyperparameter", "level", "kind", "n", "trials", "mean", "std", "ci95_low", "ci95_high", "ci_note"]
    parts = []
    for name in experiment.hyperparameters:
        values = configs[HP_PREFIX + name]
        for level, group in configs.groupby(_levels(values, bins), observed=True):
            summary = mean_interval(group[f"{metric}_mean"])
            parts.append({
                "hyperparameter": name, "level": str(level),
                "kind": "continuous" if is_continuous(values) else "categorical",
                **summary, "trials": int(group["n"].sum()),
            })
    return pd.DataFrame(parts, columns=columns).astype({"n": int, "trials": int})


def rank_correlation(experiment: Experiment, metric: str = RANK_BY) -> pd.DataFrame:
    """Spearman's rank correlation of each numeric hyperparameter with the configurations' mean metric."""
    configs = configurations(experiment, metric)
    configs = configs[configs["n"] > 0] if not configs.empty else configs
    rows = []
    for name in experiment.hyperparameters:
        values, means = configs[HP_PREFIX + name], configs[f"{metric}_mean"]
        if not is_continuous(values):
            continue
        varied = values.nunique() > 1 and means.nunique() > 1
        rho, p = stats.spearmanr(values, means) if varied else (math.nan, math.nan)
        rows.append({"hyperparameter": name, "n": len(values), "spearman_rho": rho, "p_value": p})
    return pd.DataFrame(rows, columns=["hyperparameter", "n", "spearman_rho", "p_value"])


# ----------------------------------------------------------------------------------- ASHA's rungs

RUNG_RESULT_COLUMNS = ["rung", "milestone", "trial_id", "epoch", "value", "cutoff", "decision", "outcome"]
FROM_DECISIONS = "decisions.parquet"
RECOMPUTED = "recomputed from epochs (no decisions.parquet): cut-off once every trial had arrived"


def has_rungs(experiment: Experiment) -> bool:
    """Whether the experiment has ASHA rungs to show (recorded decisions, or ASHA's settings to recompute them)."""
    return experiment.decisions is not None or experiment.scheduler.has_rungs


def rung_epochs(settings: SchedulerSettings) -> list[float]:
    """ASHA's rung milestones, ascending (tune_jobs.schema.milestones); used only for experiments without
    decisions.parquet."""
    if not settings.has_rungs:
        return []
    return sorted(float(m) for m in milestones(settings.grace_period, settings.max_t, settings.reduction_factor))


def _outcome(decision: str, milestone: float, max_t: float) -> str:
    if decision == "CONTINUE":
        return "continued"
    return "completed" if milestone >= max_t else "stopped"


def _recorded_rungs(experiment: Experiment) -> pd.DataFrame:
    """rung_results from the scheduler's own decisions."""
    decisions = experiment.decisions
    max_t = experiment.scheduler.max_t or math.inf
    order = sorted(set(rung_epochs(experiment.scheduler)) | set(decisions["milestone"]))
    table = pd.DataFrame({
        "rung": decisions["milestone"].map(order.index),
        "milestone": decisions["milestone"].astype(float),
        "trial_id": decisions["trial_id"].astype(str),
        "epoch": decisions["epoch"].astype(int),
        "value": decisions["value"].astype(float),
        "cutoff": decisions["cutoff"].astype(float),
        "decision": decisions["decision"],
        "outcome": [_outcome(d, m, max_t) for d, m in zip(decisions["decision"], decisions["milestone"], strict=True)],
    })
    return table.sort_values("rung", kind="stable", ignore_index=True)  # each rung's decisions in the order made


def _recomputed_rungs(experiment: Experiment) -> pd.DataFrame:
    """rung_results recomputed from the epochs table: who reached each milestone and what it did next."""
    settings = experiment.scheduler
    epochs = experiment.epochs.dropna(subset=[settings.metric])
    last_epoch = epochs.groupby("trial_id")["epoch"].max()
    status = experiment.trials.set_index("trial_id")["status"]
    order = sorted(set(rung_epochs(settings)) | {float(settings.max_t)})
    rows = []
    for rung, milestone in enumerate(order):
        reached = epochs[epochs["epoch"] >= milestone].groupby("trial_id").head(1)
        for trial_id, epoch, value in zip(reached["trial_id"], reached["epoch"], reached[settings.metric], strict=True):
            if last_epoch[trial_id] > epoch:
                decision, outcome = "CONTINUE", "continued"
            elif status.get(trial_id) in UNFINISHED or status.get(trial_id) == "ERROR":
                decision, outcome = None, "running" if status.get(trial_id) in UNFINISHED else "error"
            else:
                decision = "STOP"
                outcome = _outcome(decision, milestone, settings.max_t)
            rows.append({"rung": rung, "milestone": milestone, "trial_id": trial_id, "epoch": int(epoch),
                         "value": float(value), "cutoff": math.nan, "decision": decision, "outcome": outcome})
    return pd.DataFrame(rows, columns=RUNG_RESULT_COLUMNS)


def rung_results(experiment: Experiment) -> pd.DataFrame:
    """One row per trial per rung it reached: the epoch it reported there, its value, the cut-off it was compared
    with, ASHA's decision and its outcome (continued, stopped, completed at max_t).

    From decisions.parquet (ASHA's real decisions, made as results arrived) when the experiment has it; else
    recomputed from the epochs table (no cut-off per trial then: the decision is inferred from how far it ran).
    """
    if experiment.decisions is not None:
        return _recorded_rungs(experiment)
    if experiment.scheduler.has_rungs:
        return _recomputed_rungs(experiment)
    return pd.DataFrame(columns=RUNG_RESULT_COLUMNS)


def final_cutoff(values: pd.Series, mode: str, reduction_factor: float) -> float:
    """ASHA's cut-off once all `values` are in the rung: their top-1/reduction_factor quantile."""
    sign = 1.0 if mode == "max" else -1.0
    return float(sign * np.nanpercentile(sign * values.to_numpy(float), (1 - 1 / reduction_factor) * 100))


def asha_rungs(experiment: Experiment) -> pd.DataFrame:
    """Per rung: its epoch, how many trials reached it, went on, were stopped or completed there, the range of the
    cut-offs they were compared with, the best value, and where the numbers come from (`source`)."""
    settings = experiment.scheduler
    results = rung_results(experiment)
    columns = ["rung", "epoch", "metric", "reached", "continued", "stopped", "completed", "undecided", "cutoff_min",
               "cutoff_max", "best", "source"]
    rows = []
    for (rung, milestone), group in results.groupby(["rung", "milestone"], sort=True):
        counts = group["outcome"].value_counts()
        if experiment.decisions is not None:
            cutoffs, source = group["cutoff"].dropna(), FROM_DECISIONS
            low, high = (cutoffs.min(), cutoffs.max()) if len(cutoffs) else (math.nan, math.nan)
        else:
            source = RECOMPUTED
            low = high = final_cutoff(group["value"], settings.mode, settings.reduction_factor)
        decided = sum(int(counts.get(o, 0)) for o in ("continued", "stopped", "completed"))
        rows.append({
            "rung": int(rung), "epoch": milestone, "metric": settings.metric, "reached": len(group),
            "continued": int(counts.get("continued", 0)), "stopped": int(counts.get("stopped", 0)),
            "completed": int(counts.get("completed", 0)), "undecided": len(group) - decided,
            "cutoff_min": low, "cutoff_max": high,
            "best": group["value"].max() if settings.mode == "max" else group["value"].min(), "source": source,
        })
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------------- a common epoch


def common_epoch(experiment: Experiment) -> int:
    """An epoch at which to compare trials: ASHA's highest rung that at least two trials reached, else the last
    epoch every trial reached."""
    results = rung_results(experiment)
    reached = results.groupby("milestone")["trial_id"].nunique()
    if (reached >= 2).any():
        return math.ceil(reached[reached >= 2].index.max())
    return int(experiment.epochs.groupby("trial_id")["epoch"].max().min())


def compare_at_epoch(experiment: Experiment, epoch: int | None = None) -> pd.DataFrame:
    """Every trial that reported `epoch` (default: common_epoch), ranked by the scheduler's metric there, with
    its losses at that epoch and its final best_val_acc beside them."""
    epoch = common_epoch(experiment) if epoch is None else epoch
    settings = experiment.scheduler
    at = experiment.epochs[experiment.epochs["epoch"] == epoch].groupby("trial_id").tail(1)
    measured = [c for c in dict.fromkeys([settings.metric, "val_acc", "val_loss", "train_loss"]) if c in at]
    info = experiment.trials[["trial_id", "config_id", "status", *experiment.hp_columns, RANK_BY]]
    table = at[["trial_id", "epoch", *measured]].merge(info, on="trial_id", how="left")
    table = table.assign(_key=_order(table[settings.metric], settings.mode))
    table = table.sort_values(["_key", "trial_id"], na_position="last").drop(columns="_key")
    table.insert(0, f"rank_at_epoch_{epoch}", range(1, len(table) + 1))
    columns = [table.columns[0], "trial_id", "config_id", "status", *experiment.hp_columns, "epoch", *measured,
               RANK_BY]
    return table[columns].rename(columns={RANK_BY: f"final_{RANK_BY}"}).reset_index(drop=True)


# ----------------------------------------------------------------------------------- cost


def _basis(status: str, epochs: int, max_t: int, stopped: bool) -> str:
    if status in UNFINISHED:
        return f"running: max_t extrapolated from its {epochs} epochs so far"
    if status == "ERROR":
        return f"error after {epochs} epochs: max_t extrapolated"
    if epochs >= max_t:
        return "ran max_t epochs"
    return "stopped early: max_t extrapolated" if stopped else f"ended after {epochs} epochs: max_t extrapolated"


def cost_by_trial(experiment: Experiment) -> pd.DataFrame:
    """Per trial: device-hours spent, and extrapolated to max_t from the trial's own per-epoch cost; `basis` says
    which (a running trial's spending is so far, its max_t figure an extrapolation)."""
    trials = experiment.trials
    per_epoch = trials["device_hours"] / trials["epochs"].where(trials["epochs"] > 0)
    basis = [_basis(*row) for row in zip(trials["status"], trials["epochs"], trials["max_t"], trials["stopped_early"],
                                         strict=True)]
    return pd.DataFrame({
        "trial_id": trials["trial_id"],
        "status": trials["status"],
        "epochs": trials["epochs"],
        "max_t": trials["max_t"],
        "stopped_early": trials["stopped_early"],
        "device_hours": trials["device_hours"],
        "device_hours_per_epoch": per_epoch,
        "device_hours_at_max_t": (per_epoch * trials["max_t"]).fillna(trials["device_hours"]),
        "basis": basis,
    })


def cost_summary(experiment: Experiment) -> pd.DataFrame:
    """One row: trials (running, errored, stopped early), device-hours spent, at max_t, and what early stopping
    saved: the extrapolated remainder of the trials the scheduler stopped (not of running or errored ones)."""
    costs = cost_by_trial(experiment)
    spent, full = costs["device_hours"].sum(), costs["device_hours_at_max_t"].sum()
    stopped = costs[costs["stopped_early"].astype(bool)]
    saved = (stopped["device_hours_at_max_t"] - stopped["device_hours"]).sum()
    running = int(costs["status"].isin(UNFINISHED).sum())
    devices = experiment.trials.get("device", pd.Series(["unknown"]))
    note = "" if not running else (f"{running} trial(s) still running: device_hours counts their epochs so far, "
                                   "device_hours_at_max_t extrapolates them")
    return pd.DataFrame([{
        "device": ",".join(sorted(devices.astype(str).unique())),
        "trials": len(costs),
        "running": running,
        "errored": int((costs["status"] == "ERROR").sum()),
        "stopped_early": len(stopped),
        "epochs_run": int(costs["epochs"].sum()),
        "epochs_at_max_t": int(costs["max_t"].sum()),
        "device_hours": spent,
        "device_hours_at_max_t": full,
        "device_hours_saved": saved,
        "saved_fraction": saved / full if full > 0 else math.nan,
        "note": note,
    }])


# ----------------------------------------------------------------------------------- published numbers

PUBLISHED_COLUMNS = ["checkpoint", "epoch", "published_test_acc", "trials_reached", "best_val_acc", "best_test_acc"]


def setting(experiment: Experiment) -> tuple[str, str] | None:
    """The sweep's (dataset, network), or None when the trials table does not name a single one."""
    trials = experiment.trials
    if not {"dataset", "network"} <= set(trials.columns):
        return None
    pairs = trials[["dataset", "network"]].drop_duplicates()
    return (str(pairs.iloc[0, 0]), str(pairs.iloc[0, 1])) if len(pairs) == 1 else None


def _at_epoch(experiment: Experiment, epoch: int) -> dict[str, float | int]:
    """How many trials reached `epoch`, and their best val and test top-1 there."""
    rows = experiment.epochs[experiment.epochs["epoch"] == epoch]
    best_test = rows.get("test_acc", pd.Series(dtype=float)).max()
    return {"trials_reached": rows["trial_id"].nunique(), "best_val_acc": rows["val_acc"].max(),
            "best_test_acc": best_test}


def published_comparison(experiment: Experiment) -> pd.DataFrame:
    """Per release checkpoint and for the best epoch: published test top-1 beside the sweep's best.

    The release's test top-1 at its 0-based epoch e is reached here after e + 1 epochs.
    """
    key = setting(experiment)
    name = recipe_name(*key) if key is not None else None
    if name not in PUBLISHED_TOP1:
        named = "unknown data set/network" if key is None else "+".join(key)
        return pd.DataFrame({"note": [f"no published AlignMixup result for {named}"]})
    rows = [
        {"checkpoint": f"release epoch {e}", "epoch": e + 1, "published_test_acc": acc, **_at_epoch(experiment, e + 1)}
        for e, acc in RELEASE_CURVES.get(name, {}).items()
    ]
    trials = experiment.trials
    rows.append({
        "checkpoint": "best epoch", "epoch": int(trials["epochs"].max()), "published_test_acc": PUBLISHED_TOP1[name],
        "trials_reached": len(trials), "best_val_acc": trials["best_val_acc"].max(),
        "best_test_acc": trials["test_acc"].max(),
    })
    return pd.DataFrame(rows, columns=PUBLISHED_COLUMNS)


# ----------------------------------------------------------------------------------- Sinkhorn convergence


def has_sinkhorn(experiment: Experiment) -> bool:
    """Whether the epochs report Sinkhorn's convergence (sinkhorn_iters, sinkhorn_marginal_err) with a value."""
    return all(c in experiment.epochs and experiment.epochs[c].notna().any() for c in SINKHORN)


def sinkhorn_convergence(experiment: Experiment) -> pd.DataFrame:
    """Per trial, by eps: epochs with an aligned batch, and the mean and last of Sinkhorn's iterations and its
    marginal error |R·1 - 1| over them (epochs without an aligned batch report none and are left out)."""
    iters, err = SINKHORN
    columns = ["trial_id", "config_id", "status", "hp_eps", "hp_mix_layers", "aligned_epochs", f"{iters}_mean",
               f"{iters}_last", f"{err}_mean", f"{err}_max", f"{err}_last", "last_aligned_epoch"]
    if not has_sinkhorn(experiment):
        return pd.DataFrame(columns=columns)
    aligned = experiment.epochs.dropna(subset=list(SINKHORN))
    per_trial = aligned.groupby("trial_id", sort=False).agg(**{
        "aligned_epochs": ("epoch", "size"), f"{iters}_mean": (iters, "mean"), f"{iters}_last": (iters, "last"),
        f"{err}_mean": (err, "mean"), f"{err}_max": (err, "max"), f"{err}_last": (err, "last"),
        "last_aligned_epoch": ("epoch", "last"),
    })
    info = experiment.trials.reindex(columns=["trial_id", "config_id", "status", "hp_eps", "hp_mix_layers"])
    table = info.merge(per_trial.reset_index(), on="trial_id", how="inner")
    return table[columns].sort_values(["hp_eps", "trial_id"], ignore_index=True)


# ----------------------------------------------------------------------------------- Pareto front


def objective_values(experiment: Experiment) -> pd.DataFrame:
    """Per trial with a complete evaluation: the objectives' values at its last epoch where every objective was
    reported (evaluations such as val_ece come only at some epochs), that epoch, its status and whether counted."""
    names = [o.metric for o in experiment.objectives]
    columns = ["trial_id", "config_id", "status", "counted", "epoch", *names, *experiment.hp_columns]
    if not names:
        return pd.DataFrame(columns=columns)
    complete = objective_rows(experiment.epochs, names)
    info = experiment.trials.assign(counted=experiment.counted)
    info = info.reindex(columns=["trial_id", "config_id", "status", "counted", *experiment.hp_columns])
    return complete.merge(info, on="trial_id", how="inner")[columns].reset_index(drop=True)


def pareto_front(experiment: Experiment, by: str = "trial") -> pd.DataFrame:
    """The non-dominated trials (by="trial") or configurations (by="config": each, by `experiment.unit`, at the
    means of its counted trials' values, with n and standard deviations), best first on the first objective. Only
    counted trials with every objective reported take part."""
    objs = experiment.objectives
    names = [o.metric for o in objs]
    values = objective_values(experiment)
    values = values[values["counted"].astype(bool)]
    if by == "config":
        grouped = values.groupby(experiment.unit, sort=False)
        points = grouped[names].mean().add_suffix("_mean")
        table = pd.concat([
            grouped["trial_id"].agg(lambda t: ",".join(t)).rename("trials"), grouped.size().rename("n"), points,
            grouped[names].std().add_suffix("_std"), grouped[experiment.hp_columns].first(),
        ], axis=1).reset_index()
        signed = np.column_stack([o.sign * table[f"{o.metric}_mean"].to_numpy(float) for o in objs])
        first = f"{names[0]}_mean"
    elif by == "trial":
        table = values.drop(columns="counted").reset_index(drop=True)
        signed = np.column_stack([o.sign * table[o.metric].to_numpy(float) for o in objs]) if objs else None
        first = names[0] if names else None
    else:
        raise ValueError(f"by: expected trial or config (got {by!r})")
    if table.empty or first is None:
        return table
    front = table[pareto_mask(signed)]
    return front.assign(_key=-objs[0].sign * front[first]).sort_values(["_key"]).drop(columns="_key").reset_index(
        drop=True)


# ----------------------------------------------------------------------------------- population-based training


def has_donors(experiment: Experiment) -> bool:
    """Whether the epochs record population-based exploits (donor_trial_id, donor_epoch)."""
    return DONOR in experiment.epochs and DONOR_EPOCH in experiment.epochs


def exploits(experiment: Experiment) -> pd.DataFrame:
    """One row per exploit: the trial, its first epoch after it, the donor and its checkpoint's epoch, and each
    hyperparameter as the trial now uses it beside the donor's value at that epoch (what explore perturbed)."""
    hps = [c for c in experiment.hp_columns if c in experiment.epochs]
    columns = ["trial_id", "epoch", DONOR, DONOR_EPOCH, *[c for h in hps for c in (h, f"{h}_donor")]]
    if not has_donors(experiment):
        return pd.DataFrame(columns=columns)
    epochs = experiment.epochs
    rows = epochs[epochs[DONOR].notna()]
    out = []
    for _, row in rows.iterrows():
        donor = _rows_until(epochs, row[DONOR], int(row[DONOR_EPOCH]), _taken_at(row)).iloc[-1]
        values = {c: v for h in hps for c, v in ((h, row[h]), (f"{h}_donor", donor[h]))}
        out.append({"trial_id": row["trial_id"], "epoch": int(row["epoch"]), DONOR: row[DONOR],
                    DONOR_EPOCH: int(row[DONOR_EPOCH]), **values})
    return pd.DataFrame(out, columns=columns)


def _rows_until(epochs: pd.DataFrame, trial_id: str, epoch: int | None, before: float | None = None) -> pd.DataFrame:
    """A trial's rows in report order up to (and with) its row at `epoch` (all rows when epoch is None): its last
    report of that epoch made before `before` (reported_at) when the rows carry the time, else its last one."""
    rows = epochs[epochs["trial_id"] == trial_id]
    if epoch is None:
        return rows
    at = rows["epoch"].to_numpy() == epoch
    if before is not None and REPORTED_AT in rows and not math.isnan(before):
        at &= rows[REPORTED_AT].to_numpy(float) <= before
    found = np.flatnonzero(at)
    if not len(found):
        raise ValueError(f"trial {trial_id} never reported epoch {epoch}, yet a trial took its checkpoint there")
    return rows.iloc[: found[-1] + 1]


def _taken_at(row: pd.Series) -> float | None:
    """When a trial reported the first epoch after an exploit (the donor's checkpoint was taken before)."""
    return float(row[REPORTED_AT]) if REPORTED_AT in row and not pd.isna(row[REPORTED_AT]) else None


def segments(rows: pd.DataFrame) -> list[pd.DataFrame]:
    """A trial's rows (report order) split where it continued from another checkpoint (a donor row starts one)."""
    if DONOR not in rows:
        return [rows]
    starts = [0, *np.flatnonzero(rows[DONOR].notna().to_numpy())]
    bounds = [*sorted(set(starts)), len(rows)]
    return [rows.iloc[a:b] for a, b in pairwise(bounds) if b > a]


def final_best_trial(experiment: Experiment) -> str:
    """The trial whose last report is best on the scheduler's metric (what PBT optimises)."""
    settings = experiment.scheduler
    last = experiment.epochs.dropna(subset=[settings.metric]).groupby("trial_id").tail(1)
    values = last.set_index("trial_id")[settings.metric]
    return str(values.idxmax() if settings.mode == "max" else values.idxmin())


def lineage_segments(experiment: Experiment, trial_id: str | None = None) -> list[pd.DataFrame]:
    """The rows behind a trial's final model (default: final_best_trial), one frame per segment, oldest first:
    its own rows since its last exploit, then its donor's rows up to the donor's epoch (themselves since that
    trial's own last exploit before then), and so on back to a segment that started from scratch."""
    trial_id = final_best_trial(experiment) if trial_id is None else trial_id
    chain: list[pd.DataFrame] = []
    current, upto, before = trial_id, None, None
    for _ in range(len(experiment.epochs) + 1):
        segment = segments(_rows_until(experiment.epochs, current, upto, before))[-1]
        chain.append(segment)
        start = segment.iloc[0]
        donor = start.get(DONOR) if has_donors(experiment) else None
        if donor is None or pd.isna(donor):
            return chain[::-1]
        current, upto, before = str(donor), int(start[DONOR_EPOCH]), _taken_at(start)
    raise ValueError(f"the donors of trial {trial_id} form a cycle")


def lineage(experiment: Experiment, trial_id: str | None = None) -> pd.DataFrame:
    """The lineage of a trial's final model (default: final_best_trial) as a table, oldest segment first: the
    trial that trained it, its first and last epoch, the donor whose checkpoint it started from and that
    checkpoint's epoch, its hyperparameters (at the segment's start) and its metric at the segment's end."""
    metric = experiment.scheduler.metric
    hps = [c for c in experiment.hp_columns if c in experiment.epochs]
    rows = []
    for step, segment in enumerate(lineage_segments(experiment, trial_id)):
        start, end = segment.iloc[0], segment.iloc[-1]
        donor = start.get(DONOR)
        donor = None if donor is None or pd.isna(donor) else str(donor)
        rows.append({"step": step, "trial_id": start["trial_id"], "first_epoch": int(start["epoch"]),
                     "last_epoch": int(end["epoch"]), DONOR: donor,
                     DONOR_EPOCH: None if donor is None else int(start[DONOR_EPOCH]), **{h: start[h] for h in hps},
                     metric: end[metric]})
    columns = ["step", "trial_id", "first_epoch", "last_epoch", DONOR, DONOR_EPOCH, *hps, metric]
    return pd.DataFrame(rows, columns=columns).astype({DONOR_EPOCH: "Int64"})


# ----------------------------------------------------------------------------------- Markdown


def _cell(value: object) -> str:
    """One cell's text: floats to 4 significant digits, missing values empty."""
    if value is None or value is pd.NA or (pd.api.types.is_float(value) and pd.isna(value)):
        return ""
    return f"{value:.4g}" if pd.api.types.is_float(value) else str(value).replace("|", "\\|")


def to_markdown(table: pd.DataFrame) -> str:
    """The table as GitHub-flavoured Markdown: a header row, a separator, then one line per row (no index)."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)
