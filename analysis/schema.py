"""Names in the experiment directory (tune_jobs.layout, import-free) and the accuracy the tables rank by."""

from tune_jobs.layout import EPOCHS_TABLE, HP_PREFIX, SWEEP_FILE, TRIALS_TABLE

ACCURACY = "best_val_acc"

__all__ = ["ACCURACY", "EPOCHS_TABLE", "HP_PREFIX", "SWEEP_FILE", "TRIALS_TABLE"]
