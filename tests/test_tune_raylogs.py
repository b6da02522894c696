"""Ray's own logs kept whole (tune_jobs.raylogs): a trial's result.json and progress.csv at a restart in the same
driver, PBT's exploit logs across a resume. Ray's loggers and PBT are the oracles, called as Tune calls them."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from tune_jobs import driver, raylogs
from tune_jobs.config import validate

STORED, DRIVER = "epoch 1\n", "epoch 1\nepoch 2\n"


def trial_with_logs(tmp_path: Path, name: str) -> SimpleNamespace:
    """A trial with a checkpoint (so Ray restores its logs), its file in the experiment (one row) and, in the
    driver's staging folder, the same file with a row the last upload has not carried yet."""
    remote, local = tmp_path / "experiment" / "trial_1", tmp_path / "staging" / "trial_1"
    remote.mkdir(parents=True)
    local.mkdir(parents=True)
    (remote / name).write_text(STORED)
    (local / name).write_text(DRIVER)
    storage = SimpleNamespace(trial_fs_path=str(remote), storage_filesystem=pafs.LocalFileSystem())
    return SimpleNamespace(checkpoint=object(), local_path=str(local), storage=storage)


@pytest.mark.parametrize(("ours", "rays", "name"), [(raylogs.JsonLog, JsonLoggerCallback, "result.json"),
                                                    (raylogs.CsvLog, CSVLoggerCallback, "progress.csv")])
def test_a_restart_keeps_the_driver_s_rows_and_a_resume_fetches_the_stored_ones(tmp_path, ours, rays, name) -> None:
    trial = trial_with_logs(tmp_path / "ray", name)
    rays()._restore_from_remote(name, trial)
    assert Path(trial.local_path, name).read_text() == STORED  # Ray 2.60: the second row is gone
    trial = trial_with_logs(tmp_path / "ours", name)
    ours()._restore_from_remote(name, trial)
    assert Path(trial.local_path, name).read_text() == DRIVER
    Path(trial.local_path, name).unlink()  # a resumed driver: a new staging folder, without the file
    ours()._restore_from_remote(name, trial)
    assert Path(trial.local_path, name).read_text() == STORED
    assert isinstance(ours(), rays)  # it stands in for Tune's default logger (Tune checks isinstance)


def test_a_resumed_pbt_appends_to_the_exploit_logs_of_the_first_run(tmp_path) -> None:
    experiment, staging = tmp_path / "experiment", tmp_path / "staging"
    experiment.mkdir()
    staging.mkdir()
    first = json.dumps(["1_lr=0.1", "0_lr=0.2", 2, 2, {"lr": 0.2}, {"lr": 0.1}])
    (experiment / "pbt_global.txt").write_text(first + "\n")
    (experiment / "pbt_policy_t1.txt").write_text(first + "\n")
    (experiment / "result.json").write_text("{}\n")
    sweep = validate({"train": {"dataset": "digits"}, "search": {"lr": {"grid": [0.1, 0.2]}},
                      "scheduler": {"kind": "pbt", "max_t": 4, "perturbation_interval": 2,
                                    "mutations": {"lr": {"choice": [0.1, 0.2]}}}})
    pbt = driver.scheduler(sweep, str(experiment))
    trial = SimpleNamespace(trial_id="t1", local_experiment_path=str(staging), last_result={"training_iteration": 4})
    donor = SimpleNamespace(trial_id="t0", local_dir=str(staging), last_result={"training_iteration": 4},
                            config={"lr": 0.2})
    pbt._log_config_on_step(SimpleNamespace(orig_tag="1_lr=0.1"), SimpleNamespace(orig_tag="0_lr=0.2"), trial, donor,
                            {"lr": 0.1})
    lines = (staging / "pbt_global.txt").read_text().splitlines()
    assert lines[0] == first and json.loads(lines[1])[:4] == ["1_lr=0.1", "0_lr=0.2", 4, 4] and len(lines) == 2
    assert (staging / "pbt_policy_t1.txt").read_text().splitlines()[0] == first
    assert not (staging / "result.json").exists()  # only PBT's logs: Ray fetches the rest itself
    assert raylogs.carry_pbt_logs(str(experiment), str(staging)) == []  # the driver's copies are never replaced
