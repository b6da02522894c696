"""The sweep beside AlignMixup's published top-1 and the release's learning-curve checkpoints."""

from __future__ import annotations

import pandas as pd

from alignmixup.presets import PUBLISHED_TOP1, RELEASE_CURVES, recipe_name
from analysis.experiment import Experiment

COLUMNS = ["checkpoint", "epoch", "published_test_acc", "trials_reached", "best_val_acc", "best_test_acc"]


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
    return {"trials_reached": len(rows), "best_val_acc": rows["val_acc"].max(), "best_test_acc": best_test}


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
        {
            "checkpoint": f"release epoch {e}",
            "epoch": e + 1,
            "published_test_acc": acc,
            **_at_epoch(experiment, e + 1),
        }
        for e, acc in RELEASE_CURVES.get(name, {}).items()
    ]
    trials = experiment.trials
    rows.append(
        {
            "checkpoint": "best epoch",
            "epoch": int(trials["epochs"].max()),
            "published_test_acc": PUBLISHED_TOP1[name],
            "trials_reached": len(trials),
            "best_val_acc": trials["best_val_acc"].max(),
            "best_test_acc": trials["test_acc"].max(),
        }
    )
    return pd.DataFrame(rows, columns=COLUMNS)
