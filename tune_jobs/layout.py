"""Names of what a sweep leaves in its experiment directory; no imports, so analysis can read them cheaply."""

TRIALS_TABLE = "trials.parquet"
TRIALS_CSV = "trials.csv"
EPOCHS_TABLE = "epochs.parquet"
SWEEP_FILE = "sweep.json"
TRAIN_RUNS = "train_runs"  # <experiment>/train_runs/train-<trial_id>/checkpoint_*: each trial's Ray Train run
HP_PREFIX = "hp_"  # trials-table column of a hyperparameter: hp_<name>
