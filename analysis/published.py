"""The sweep beside AlignMixup's published top-1 and the release's learning-curve checkpoints."""

from __future__ import annotations

import pandas as pd

from analysis.experiment import Experiment

# Top-1 % (best epoch) from the paper, and the release's test top-1 at its 0-based epoch e
# (reached here after e + 1 epochs); source: shared/reference/alignmixup.md.
PUBLISHED_TOP1: dict[tuple[str, str], float] = {
    ("cifar10", "preactresnet18"): 97.05,
    ("cifar10", "wrn16_8"): 96.91,
    ("cifar100", "preactresnet18"): 81.71,
    ("cifar100", "wrn16_8"): 81.23,
    ("tinyimagenet", "preactresnet18"): 66.87,
    ("imagenet", "resnet50"): 79.32,
}
CHECKPOINTS: dict[tuple[str, str], dict[int, float]] = {
    ("cifar10", "preactresnet18"): {0: 43.6, 100: 91.0, 500: 94.9, 1000: 96.1},
    ("cifar100", "preactresnet18"): {0: 12.2, 100: 68.9, 500: 76.9, 1000: 80.0},
    ("tinyimagenet", "preactresnet18"): {0: 10.7, 100: 55.6, 600: 63.7, 1000: 65.3},
}
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
    """Per release checkpoint and for the best epoch: published test top-1 beside the sweep's best."""
    key = setting(experiment)
    if key not in PUBLISHED_TOP1:
        named = "unknown data set/network" if key is None else "+".join(key)
        return pd.DataFrame({"note": [f"no published AlignMixup result for {named}"]})
    rows = [
        {
            "checkpoint": f"release epoch {e}",
            "epoch": e + 1,
            "published_test_acc": acc,
            **_at_epoch(experiment, e + 1),
        }
        for e, acc in CHECKPOINTS.get(key, {}).items()
    ]
    trials = experiment.trials
    rows.append(
        {
            "checkpoint": "best epoch",
            "epoch": int(trials["epochs"].max()),
            "published_test_acc": PUBLISHED_TOP1[key],
            "trials_reached": len(trials),
            "best_val_acc": trials["best_val_acc"].max(),
            "best_test_acc": trials["test_acc"].max(),
        }
    )
    return pd.DataFrame(rows, columns=COLUMNS)
