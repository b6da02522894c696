"""SIGINT to a running sweep, then `alignmixup-tune resume`: finished trials are kept, the rest complete."""

from __future__ import annotations

import signal
import time

import pandas as pd
from conftest import SMALL_SWEEP, SWEEP_TIMEOUT_S, TuneCli, latest_reports, read_results

from tune_jobs.cli import EXIT_INTERRUPTED
from tune_jobs.layout import TRAIN_RUNS

RESUME_SWEEP = {
    **SMALL_SWEEP,
    "description": "test sweep: 3 trials of 2 epochs, interrupted after the first finishes",
    "scheduler": {"kind": "fifo", "max_t": 2},
    "num_samples": 3,
}


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tune_cli: TuneCli) -> None:
    config = tune_cli.write_sweep(RESUME_SWEEP, "resume")
    storage = tune_cli.root / "runs"
    experiment = storage / "resume"
    proc = tune_cli.start("run", str(config), "--storage", str(storage), "--name", "resume", log="resume.log")
    tune_cli.wait(proc, lambda: any(r["epoch"] == 2 for r in latest_reports(experiment).values()),
                  "a trial's last epoch", SWEEP_TIMEOUT_S)
    time.sleep(5)  # the trial's driver returns and Tune marks it TERMINATED
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=180) == EXIT_INTERRUPTED, tune_cli.log("resume.log")[-3000:]
    assert f"alignmixup-tune resume {experiment}" in tune_cli.log("resume.log")

    interrupted = pd.read_parquet(experiment / "trials.parquet").set_index("trial_id")
    finished = list(interrupted.index[interrupted["status"] == "TERMINATED"])
    assert 1 <= len(finished) < len(interrupted) == RESUME_SWEEP["num_samples"]
    untouched = {t: (experiment / f"trial_{t}" / "result.json").read_text() for t in finished}
    checkpoints = {t: sorted((experiment / TRAIN_RUNS / f"train-{t}").glob("checkpoint_*")) for t in finished}

    proc = tune_cli.start("resume", str(experiment), log="resume.log")
    assert proc.wait(timeout=SWEEP_TIMEOUT_S) == 0, tune_cli.log("resume.log")[-3000:]

    trials = pd.read_parquet(experiment / "trials.parquet")
    assert trials["trial_id"].is_unique and set(trials["trial_id"]) == set(interrupted.index)
    assert (trials["status"] == "TERMINATED").all() and (trials["epochs"] == 2).all()
    for t in finished:  # not rerun: no new results, no new checkpoints
        assert (experiment / f"trial_{t}" / "result.json").read_text() == untouched[t]
        assert sorted((experiment / TRAIN_RUNS / f"train-{t}").glob("checkpoint_*")) == checkpoints[t]
    epochs = pd.read_parquet(experiment / "epochs.parquet")
    for trial_id, rows in read_results(experiment).items():  # interrupted trials went on from their checkpoint
        assert [r["epoch"] for r in rows] == [1, 2], trial_id
        assert list(epochs.loc[epochs["trial_id"] == trial_id, "epoch"]) == [1, 2]
