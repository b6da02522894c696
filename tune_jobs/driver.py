"""The Ray edge: a Tune function trainable that fits one TorchTrainer per trial, the Tuner, run and resume.

Each trial's Ray Train run is named after the trial and stored under <experiment>/train_runs, so a
retried trial (Tune's FailureConfig) or a resumed experiment (Tuner.restore) restores the Train
run from its latest checkpoint; Train's own FailureConfig restarts dead workers from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.experiment import Trial
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, SearchAlgorithm, Searcher

from tune_jobs import pin_ray_address
from tune_jobs.config import Param, SweepConfig, validate
from tune_jobs.layout import TRAIN_RUNS
from tune_jobs.tables import (
    TrialRecord,
    epochs_frame,
    read_rows,
    read_sweep,
    trials_frame,
    write_sweep,
    write_tables,
)
from tune_jobs.worker import train_loop_per_worker

DOMAINS: dict[str, Callable[[tuple[Any, ...]], Any]] = {
    "fixed": lambda v: v[0],
    "choice": lambda v: tune.choice(list(v)),
    "grid": lambda v: tune.grid_search(list(v)),
    "uniform": lambda v: tune.uniform(*v),
    "loguniform": lambda v: tune.loguniform(*v),
}
FINISHED = (Trial.TERMINATED, Trial.ERROR)


def trial_dirname(trial: Trial) -> str:
    """Short, stable trial directory names: trial_<id>."""
    return f"trial_{trial.trial_id}"


def run_trial(config: dict[str, Any], sweep: dict[str, Any], experiment: str) -> None:
    """One Tune trial: a Ray Train run of the trial's TrainConfig, reporting to Tune every epoch."""
    sw = validate(sweep)
    s = sw.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": sw.trial_config(config).model_dump(mode="json")},
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources,
            placement_strategy=s.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            # same (storage_path, name) on a retry or resume: Train restores the run from its checkpoint
            name=f"train-{tune.get_context().get_trial_id()}",
            storage_path=f"{experiment}/{TRAIN_RUNS}",
            failure_config=ray.train.FailureConfig(max_failures=sw.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def trainable(sweep: SweepConfig, experiment: str) -> Any:
    """run_trial bound to the sweep, with the trial driver's small CPU share."""
    fn = tune.with_parameters(run_trial, sweep=sweep.model_dump(mode="json"), experiment=experiment)
    return tune.with_resources(fn, {"CPU": sweep.scaling.trial_cpus})


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    """The search space as Tune domains (fixed values stay plain)."""
    params: dict[str, Param] = sweep.search.params()
    return {name: DOMAINS[p.kind](p.values) for name, p in params.items()}


def scheduler(sweep: SweepConfig) -> TrialScheduler:
    """ASHA on the reported epoch, or FIFO (metric and mode come from the TuneConfig)."""
    s = sweep.scheduler
    if s.kind == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch", max_t=s.max_t, grace_period=s.grace_period, reduction_factor=s.reduction_factor
    )


def search_alg(sweep: SweepConfig) -> Searcher | SearchAlgorithm:
    """Seeded random search, or Optuna's TPE."""
    if sweep.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=sweep.seed)
    # Tune ignores TuneConfig.max_concurrent_trials for a SearchGenerator such as this one: limit it here.
    return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=sweep.max_concurrent_trials or 0)


def make_tuner(sweep: SweepConfig, experiment: str) -> tune.Tuner:
    """A fresh Tuner for the sweep, writing to `experiment` (= <storage>/<name>)."""
    storage, _, name = experiment.rpartition("/")
    return tune.Tuner(
        trainable(sweep, experiment),
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode, scheduler=scheduler(sweep), search_alg=search_alg(sweep),
            num_samples=sweep.num_samples, max_concurrent_trials=sweep.max_concurrent_trials,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, failure_config=tune.FailureConfig(max_failures=sweep.max_failures)
        ),
    )


@dataclass(frozen=True)
class Outcome:
    """How a run or resume ended and what it wrote."""

    experiment: str
    sweep: SweepConfig
    trials: pd.DataFrame
    epochs: pd.DataFrame
    files: dict[str, str]
    interrupted: bool


def collect(experiment: str) -> list[TrialRecord]:
    """Every trial of the experiment with its status, sampled config and logged results."""
    trials = sorted(tune.ExperimentAnalysis(experiment).trials, key=lambda t: t.trial_id)
    return [TrialRecord(t.trial_id, t.status, t.config, read_rows(f"{experiment}/{trial_dirname(t)}")) for t in trials]


def finish(sweep: SweepConfig, experiment: str) -> Outcome:
    """Write the tables for the experiment as it stands and say whether it was interrupted."""
    records = collect(experiment)
    trials, epochs = trials_frame(records, sweep), epochs_frame(records)
    return Outcome(
        experiment=experiment,
        sweep=sweep,
        trials=trials,
        epochs=epochs,
        files=write_tables(experiment, trials, epochs, sweep),
        interrupted=any(r.status not in FINISHED for r in records),
    )


def connect(address: str | None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS, as under `ray job submit`), else start a local one."""
    # Keep the dashboard on (the default): Train's placement-group cleaner needs the state API it serves.
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:  # "local": with no address ray.init would join any cluster `ray start` left on this machine
        ray.init(address="local", runtime_env={"worker_process_setup_hook": pin_ray_address})


def run(sweep: SweepConfig, experiment: str, address: str | None = None) -> Outcome:
    """Start the sweep; write sweep.json first (resume reads it) and the tables at the end."""
    connect(address)
    write_sweep(experiment, sweep)
    make_tuner(sweep, experiment).fit()
    return finish(sweep, experiment)


def resume(experiment: str, address: str | None = None) -> Outcome:
    """Continue an interrupted sweep: unfinished and errored trials go on, finished ones are kept."""
    sweep = read_sweep(experiment)
    connect(address)
    tuner = tune.Tuner.restore(
        experiment, trainable=trainable(sweep, experiment), resume_unfinished=True, resume_errored=True
    )
    tuner.fit()
    return finish(sweep, experiment)
