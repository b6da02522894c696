"""File and column names of the tables tune_jobs writes (see notes/contract.md)."""

TRIALS_TABLE = "trials.parquet"
EPOCHS_TABLE = "epochs.parquet"
SWEEP_FILE = "sweep.json"
HP_PREFIX = "hp_"
ACCURACY = "best_val_acc"
