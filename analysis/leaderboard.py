"""The leaderboard: trials ranked by best validation accuracy, with their hyperparameters and cost."""

from __future__ import annotations

import pandas as pd

from analysis.experiment import Experiment
from tune_jobs.schema import HP_PREFIX

ACCURACY = "best_val_acc"  # what the tables rank trials by

RESULT_COLUMNS = ["best_val_acc", "last_val_acc", "test_acc", "epochs", "stopped_early", "device_hours"]


def leaderboard(experiment: Experiment, k: int | None = 10) -> pd.DataFrame:
    """The top `k` trials (all when k is None) by best validation accuracy, rank 1 first."""
    trials = experiment.trials
    hps = [HP_PREFIX + name for name in experiment.hyperparameters]
    ranked = trials.sort_values([ACCURACY, "trial_id"], ascending=[False, True], na_position="last")
    board = ranked.reindex(columns=["trial_id", "status", *hps, *RESULT_COLUMNS]).head(k)
    board.insert(0, "rank", range(1, len(board) + 1))
    return board.reset_index(drop=True)
