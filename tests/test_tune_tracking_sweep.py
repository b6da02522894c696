"""The shared real sweep (tests/conftest.py) tracked every trial in TensorBoard, an MLflow file store and W&B
offline, across a worker retry, a driver SIGKILL and a resume: each tracker's record, read back with its own reader,
equals what the trials reported."""

from __future__ import annotations

import pytest
from helpers.sweeps import SweepRun, SweepTables
from helpers.trackers import history, mlflow_runs, numbers, scalars, wandb_history, wandb_runs

from tune_jobs.schema import BEST_WEIGHTS_FILE


def test_tensorboard_has_every_trials_val_acc_per_epoch(sweep_tables: SweepTables) -> None:
    for trial_id, rows in sweep_tables.results.items():
        events = sweep_tables.experiment / f"trial_{trial_id}"
        assert scalars(events, "val_acc") == pytest.approx(numbers(rows, "val_acc"), rel=1e-6)


def test_mlflow_runs_carry_hyperparameters_history_and_best_weights(sweep_run: SweepRun,
                                                                     sweep_tables: SweepTables) -> None:
    client, runs = mlflow_runs(sweep_run.mlflow, sweep_tables.experiment.name)
    assert set(sweep_tables.results) <= set(runs)
    for trial_id, rows in sweep_tables.results.items():
        run = runs[trial_id]
        for key in ("hp_alpha", "hp_eps", "hp_mix_layers", "config_id", "seed"):
            assert run.data.params[key] == str(rows[0][key])
        assert history(client, run, "val_acc") == pytest.approx(numbers(rows, "val_acc"))
        named = [row[BEST_WEIGHTS_FILE] for row in rows if row.get(BEST_WEIGHTS_FILE)]
        assert named and run.data.tags["best_weights"] == named[-1]  # the last file its reports named
        assert run.info.status == "FINISHED"


def test_wandb_offline_runs_hold_the_metrics(sweep_tables: SweepTables) -> None:
    for trial_id, rows in sweep_tables.results.items():
        runs = wandb_runs(sweep_tables.experiment / f"trial_{trial_id}")
        assert runs, trial_id
        assert wandb_history(runs, "val_acc") == pytest.approx(numbers(rows, "val_acc"))
