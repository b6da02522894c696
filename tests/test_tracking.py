"""Experiment tracking: TensorBoard, MLflow and W&B (offline) from `alignmixup-train --tracking` and from the sweep's
Tune callback, read back with each tracker's own reader.

- TensorBoard: `tensorboard`'s EventAccumulator (scalars, the HParams plugin's session start, text).
- MLflow: `MlflowClient(tracking_uri=...)`: search_runs, get_metric_history, the run's params and tags.
- W&B: its own reader of an offline run's .wandb log, `wandb leet inspect --json` (every record) and
  `--summary --json` (config, summary, state); offline runs write no wandb-summary.json.

The Tune callback is driven directly (no Ray cluster) with stub trials and the rows a sweep's result.json holds,
written by tests/helpers/experiments.py (the worker's reports plus Tune's keys, ASHA's stops, an erroring trial,
PBT's exploits): those rows are the truth every tracker's record is compared with.
"""

from __future__ import annotations

import csv
import json
import pickle
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from helpers.experiments import sweep_dump, write_experiment
from helpers.trackers import (
    history,
    mlflow_runs,
    numbers,
    scalars,
    tensorboard_hparams,
    tensorboard_text,
    wandb_history,
    wandb_runs,
)
from ray.tune.logger import TBXLoggerCallback

from alignmixup.cli import main
from alignmixup.console import ConfigError
from tune_jobs import tracking
from tune_jobs.config import validate
from tune_jobs.schema import BEST_WEIGHTS_FILE

# what a report holds that is not a measurement: Tune's bookkeeping, the trial's identity, the worker's extras
NOT_METRICS = ("training_iteration", "timestamp", "time_this_iter_s", "time_since_restore", "iterations_since_restore",
               "pid", "seed", "repeat", "width", "reported_at", "epoch", "config_id", "done")


# ----------------------------------------------------------------------------------- driving the callback


def stub(trial: Any, experiment: Path) -> SimpleNamespace:
    """What the callback reads of a Tune trial: its id, its sampled config and its folder on the driver."""
    return SimpleNamespace(trial_id=trial.trial_id, config=trial.params,
                           local_path=str(experiment / f"trial_{trial.trial_id}"))


def drive(callback: Any, written: Any, arrivals: list[tuple[str, int]], experiment: Path) -> None:
    """Feed each trial's rows in the order Tune saw them; a trial's last row ends it (complete or error)."""
    rows = {tid: {row["epoch"]: row for row in t.rows} for tid, t in written.trials.items()}
    last = {tid: max(rows[tid]) for tid in rows if rows[tid]}
    for tid, epoch in arrivals:
        trial = stub(written.trials[tid], experiment)
        folder = Path(trial.local_path)  # Tune's JSON logger writes the row to the trial's result.json too
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "result.json", "a") as fh:
            fh.write(json.dumps(rows[tid][epoch]) + "\n")
        callback.on_trial_result(epoch, [], trial, rows[tid][epoch])
        if epoch == last[tid]:
            if written.trials[tid].status == "ERROR":
                callback.on_trial_error(epoch, [], trial)
            else:
                callback.on_trial_complete(epoch, [], trial)


def sweep_with(tracking_section: dict[str, Any], **kwargs: Any) -> Any:
    return validate({**sweep_dump(**kwargs), "tracking": tracking_section})


def test_sweep_callback_logs_every_trial_to_three_trackers_across_a_resume(tmp_path):
    # four trials, two at a time: one trains max_t epochs, two are stopped by ASHA, one fails at epoch 3
    shape = {"configs": 4, "repeats": 1, "max_t": 4, "grace_period": 2}
    written = write_experiment(tmp_path / "source", scheduler="asha", concurrency=2, errors={2: 3}, **shape)
    experiment = tmp_path / "exp"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = sweep_with({"tensorboard": True, "mlflow": uri, "wandb": {"project": "p"}}, **shape)
    found = tracking.callbacks(sweep, str(experiment))
    assert [type(c) for c in found] == [tracking.TrackingCallback, tracking.TrackersWriteTensorBoard]
    assert isinstance(found[1], TBXLoggerCallback)  # so Tune adds no TBXLoggerCallback of its own
    pickled = pickle.dumps(found[0])  # Tune keeps the callbacks in tuner.pkl, before any trial starts

    # the driver is lost half-way (Ctrl-C here: on_experiment_end) and Tuner.restore brings the callback back
    # from tuner.pkl with the state Tune saved; the trials' folders are where Tune syncs them, one per trial
    half = len(written.arrivals) // 2
    drive(found[0], written, written.arrivals[:half], experiment)
    found[0].on_experiment_end([])
    state = found[0].get_state()
    time.sleep(1.1)  # W&B names an offline run's folder by the second it started (a real resume takes longer)
    restored = pickle.loads(pickled)
    restored.set_state(state)
    drive(restored, written, written.arrivals[half:], experiment)

    cut = {tid for tid, _ in written.arrivals[:half]} & {tid for tid, _ in written.arrivals[half:]}
    assert cut  # trials that reported before and after the resume
    client, runs = mlflow_runs(uri, "exp")
    assert sorted(runs) == sorted(written.trials)  # one run per trial, named after it, across the resume
    statuses = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}
    assert {t.status for t in written.trials.values()} == {"TERMINATED", "ERROR"}
    assert any(t.stopped_by_asha for t in written.trials.values())
    for tid, trial in written.trials.items():
        rows, run, folder = trial.rows, runs[tid], experiment / f"trial_{tid}"
        first = rows[0]
        # parameters: the trial's hyperparameters and identity, as its first report states them
        assert run.data.params == {k: str(first[k]) for k in first if k.startswith("hp_") or k in (
            "config_id", "seed", "repeat", "dataset", "network", "width")}
        assert run.info.status == statuses[trial.status]
        best = trial.rows[-1][BEST_WEIGHTS_FILE]  # the file its last report names
        assert best and run.data.tags["best_weights"] == best
        logged = set(run.data.metrics)
        assert {"val_acc", "train_loss", "lr", "val_loss", "time_total_s", "hp_alpha", "hp_eps"} <= logged
        assert not logged & set(NOT_METRICS)
        for key in logged:  # every metric's whole history is the rows' values at step = epoch
            assert history(client, run, key) == numbers(rows, key), key

        assert scalars(folder, "val_acc") == pytest.approx(numbers(rows, "val_acc"), rel=1e-6)  # float32 events
        assert scalars(folder, "hp_eps") == pytest.approx(numbers(rows, "hp_eps"), rel=1e-6)
        hparams = tensorboard_hparams(folder)
        assert hparams["hp_alpha"] == pytest.approx(first["hp_alpha"]) and hparams["seed"] == first["seed"]
        assert hparams["hp_mix_layers"] == first["hp_mix_layers"] and hparams["config_id"] == first["config_id"]
        assert tensorboard_text(folder, "best_weights") == best

        wb = wandb_runs(folder)
        assert len(wb) == (2 if tid in cut else 1)  # a resumed W&B run continues in a new offline folder
        assert len({r["run_id"] for r in wb}) == 1  # with the same run id
        assert wandb_history(wb, "val_acc") == numbers(rows, "val_acc")
        assert wandb_history(wb, "hp_alpha") == numbers(rows, "hp_alpha")
        assert wb[0]["config"]["hp_alpha"] == first["hp_alpha"] and wb[0]["config"]["seed"] == first["seed"]
        assert wb[0]["project"] == "p" and wb[-1]["summary"]["best_weights"] == run.data.tags["best_weights"]
        assert wb[-1]["exit_code"] == (0 if trial.status == "TERMINATED" else 1)


def test_population_based_exploits_keep_the_first_parameters_and_log_the_values_in_force(tmp_path):
    written = write_experiment(tmp_path / "source", scheduler="pbt", configs=4, repeats=1, max_t=4,
                               perturbation_interval=2)
    experiment = tmp_path / "exp"
    uri = f"file:{tmp_path / 'mlruns'}"
    sweep = sweep_with({"tensorboard": True, "mlflow": uri}, configs=4, repeats=1, max_t=4, search_lr=True)
    drive(tracking.callbacks(sweep, str(experiment))[0], written, written.arrivals, experiment)

    client, runs = mlflow_runs(uri, "exp")
    changed = [t for t in written.trials.values() if len({row["hp_lr"] for row in t.rows}) > 1]
    assert changed  # some trial was exploited: it continued with perturbed hyperparameters
    for tid, trial in written.trials.items():
        rows, run = trial.rows, runs[tid]
        assert run.data.params["hp_lr"] == str(rows[0]["hp_lr"]) and run.info.status == "FINISHED"
        for key in ("hp_lr", "hp_alpha", "val_acc", "donor_epoch"):
            assert history(client, run, key) == numbers(rows, key), key
        assert scalars(experiment / f"trial_{tid}", "hp_lr") == pytest.approx(numbers(rows, "hp_lr"), rel=1e-6)


def test_the_tensorboard_stand_in_writes_nothing(tmp_path):
    written = write_experiment(tmp_path / "source", scheduler="fifo", configs=1, repeats=1, max_t=2)
    (trial,) = written.trials.values()
    stand_in = tracking.TrackersWriteTensorBoard()
    trial_stub = stub(trial, tmp_path / "exp")
    stand_in.on_trial_start(0, [], trial_stub)
    stand_in.on_trial_result(1, [], trial_stub, trial.rows[0])
    stand_in.on_trial_complete(1, [], trial_stub)
    assert not (tmp_path / "exp").exists()


def test_no_tracking_section_adds_no_callbacks():
    assert tracking.callbacks(validate(sweep_dump()), "/tmp/exp") == []


# ----------------------------------------------------------------------------------- alignmixup-train


def csv_column(path: Path, key: str) -> dict[int, float]:
    """epoch -> value of a column of the run's metrics.csv."""
    with open(path) as fh:
        return {int(row["epoch"]): float(row[key]) for row in csv.DictReader(fh)}


def leaves(values: dict[str, Any]) -> int:
    return sum(leaves(v) if isinstance(v, dict) else 1 for v in values.values())


def test_command_line_run_logs_to_three_trackers_and_a_resume_continues_them(tmp_path):
    out = tmp_path / "run"
    uri = f"file:{tmp_path / 'mlruns'}"
    assert main(["--dataset", "digits", "--width", "0.125", "--epochs", "2", "--output-dir", str(out),
                 "--tracking", f"tensorboard,mlflow={uri},wandb"]) == 0
    val_acc = csv_column(out / "metrics.csv", "val_acc")
    best = str((out / "best.pt").resolve())
    best_epoch = torch.load(out / "best.pt", weights_only=True)["epoch"]
    assert best_epoch == max(val_acc, key=lambda e: (val_acc[e], -e))  # the first epoch of the best accuracy
    config = torch.load(out / "checkpoint.pt", weights_only=True)["config"]

    assert scalars(out, "val_acc") == pytest.approx(val_acc, rel=1e-6)
    assert scalars(out, "train_loss") == pytest.approx(csv_column(out / "metrics.csv", "train_loss"), rel=1e-6)
    assert tensorboard_text(out, "best_weights") == best
    assert tensorboard_hparams(out)["sinkhorn.eps"] == config["sinkhorn"]["eps"]

    client, runs = mlflow_runs(uri, "alignmixup-train")
    (run,) = runs.values()
    assert run.info.run_name == out.name and run.info.status == "FINISHED"
    assert history(client, run, "val_acc") == val_acc
    assert run.data.tags["best_weights"] == best
    assert len(run.data.params) == leaves(config)  # every setting, flattened
    assert run.data.params["lr"] == str(config["lr"]) and run.data.params["width"] == "0.125"
    assert run.data.params["sinkhorn.eps"] == str(config["sinkhorn"]["eps"])
    assert run.data.params["mix_layers"] == "[0, 4]" and run.data.params["epochs"] == "2"

    (wb,) = wandb_runs(out)
    assert wandb_history([wb], "val_acc") == val_acc
    assert wb["summary"]["best_weights"] == best and wb["state"] == "finished"
    assert wb["config"]["lr"] == config["lr"] and wb["project"] == "alignmixup"

    # --resume without --tracking keeps the run's trackers and continues its runs
    time.sleep(1.1)  # W&B names an offline run's folder by the second it started
    assert main(["--resume", "--output-dir", str(out), "--epochs", "3"]) == 0
    val_acc = csv_column(out / "metrics.csv", "val_acc")
    assert sorted(val_acc) == [1, 2, 3]
    client, runs = mlflow_runs(uri, "alignmixup-train")
    (run,) = runs.values()
    assert history(client, run, "val_acc") == val_acc and run.info.status == "FINISHED"
    assert scalars(out, "val_acc") == pytest.approx(val_acc, rel=1e-6)
    first, second = wandb_runs(out)
    assert first["run_id"] == second["run_id"] and wandb_history([first, second], "val_acc") == val_acc


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("text,named", [
    ("nonsense", "nonsense: unknown key"), ("mlflow", "mlflow: expected a tracking URI"),
    ("mlflow=mlruns", "mlflow: expected a tracking URI"), ("wandb.mode=onlin", "wandb.mode:"), ("", "expected"),
])
def test_bad_tracking_flag_is_one_line_exit_2(text, named, tmp_path, capsys):
    assert main(["--tracking", text, "--output-dir", str(tmp_path / "o"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"alignmixup-train: error: argument --tracking: {named}"), err
    assert not (tmp_path / "o").exists()


def test_bad_tracking_section_in_a_sweep_file_is_one_line_exit_2(tmp_path, capsys):
    from tune_jobs.cli import main as tune_main

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**sweep_dump(), "tracking": {"mlflow": 3}}))
    assert tune_main(["run", str(path), "--storage", str(tmp_path / "results")]) == 2  # before Ray is started
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("alignmixup-tune: error: tracking.mlflow: "), err


# the module each tracker's package provides; None in sys.modules makes its import fail as if not installed
MISSING = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


@pytest.mark.parametrize("tracker", list(MISSING))
def test_a_tracker_whose_package_is_missing_is_one_line_naming_it(tracker, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, MISSING[tracker], None)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)  # so that it imports tensorboard
    flag = {"tensorboard": "tensorboard", "mlflow": f"mlflow=file:{tmp_path / 'm'}", "wandb": "wandb"}[tracker]
    assert main(["--tracking", flag, "--output-dir", str(tmp_path / "o"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"alignmixup-train: error: argument --tracking: {tracker}: "), err
    assert "alignmixup[tracking]" in err and not (tmp_path / "o").exists()  # before anything is written

    section = {"tensorboard": True} if tracker == "tensorboard" else {tracker: {
        "mlflow": f"file:{tmp_path / 'm'}", "wandb": {}}[tracker]}
    with pytest.raises(ConfigError, match=rf"^tracking\.{tracker}: .*alignmixup\[tracking\]"):
        tracking.callbacks(sweep_with(section), str(tmp_path / "exp"))
