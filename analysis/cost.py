"""Device-hours spent by the sweep against what training every trial to max_t would have cost."""

from __future__ import annotations

import pandas as pd

from analysis.experiment import Experiment


def cost_by_trial(experiment: Experiment) -> pd.DataFrame:
    """Per trial: device-hours spent and extrapolated to max_t from the trial's own per-epoch cost."""
    trials = experiment.trials
    per_epoch = trials["device_hours"] / trials["epochs"].where(trials["epochs"] > 0)
    return pd.DataFrame(
        {
            "trial_id": trials["trial_id"],
            "epochs": trials["epochs"],
            "max_t": trials["max_t"],
            "stopped_early": trials["stopped_early"],
            "device_hours": trials["device_hours"],
            "device_hours_per_epoch": per_epoch,
            "device_hours_at_max_t": (per_epoch * trials["max_t"]).fillna(trials["device_hours"]),
        }
    )


def cost_summary(experiment: Experiment) -> pd.DataFrame:
    """One row: trials, early stops, device-hours spent, at max_t, and the saving ASHA made."""
    costs = cost_by_trial(experiment)
    spent, full = costs["device_hours"].sum(), costs["device_hours_at_max_t"].sum()
    devices = experiment.trials.get("device", pd.Series(["unknown"]))
    return pd.DataFrame(
        [
            {
                "device": ",".join(sorted(devices.astype(str).unique())),
                "trials": len(costs),
                "stopped_early": int(costs["stopped_early"].sum()),
                "epochs_run": int(costs["epochs"].sum()),
                "epochs_at_max_t": int(costs["max_t"].sum()),
                "device_hours": spent,
                "device_hours_at_max_t": full,
                "device_hours_saved": full - spent,
                "saved_fraction": 1 - spent / full if full > 0 else float("nan"),
            }
        ]
    )
