"""The Ray edge: a Tune function trainable that fits one TorchTrainer per trial, the Tuner, run and resume.

Each trial's Ray Train run is named after the trial and stored under <experiment>/train_runs, so a
retried trial (Tune's FailureConfig) or a resumed experiment (Tuner.restore) restores the Train
run from its latest checkpoint; Train's own FailureConfig restarts dead workers from it.
"""

from __future__ import annotations

import math
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
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, SearchAlgorithm, Searcher

from alignmixup.console import ConfigError
from tune_jobs import pin_ray_address, preflight, storage, tracking
from tune_jobs.config import Param, SweepConfig, experiment_path, trial_settings, validate
from tune_jobs.scheduler import RecordedASHA
from tune_jobs.schema import TRAIN_RUNS, TrialRecord, epochs_frame, read_rows, trials_frame
from tune_jobs.search import REPEAT_KEY, RepeatedSearch
from tune_jobs.tables import read_sweep, write_sweep, write_tables
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
    sampled = {k: v for k, v in config.items() if k != REPEAT_KEY}
    cfg, identity = trial_settings(sw, sampled, int(config.get(REPEAT_KEY, 0)))
    s = sw.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg.model_dump(mode="json"), "identity": identity},
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources,
            placement_strategy=s.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            # same (storage_path, name) on a retry or resume: Train restores the run from its checkpoint
            name=f"train-{tune.get_context().get_trial_id()}",
            storage_path=storage.join(experiment, TRAIN_RUNS),
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


def search_space(sweep: SweepConfig) -> dict[str, Any]:
    """The searched hyperparameters as Tune domains (fixed values stay plain)."""
    params: dict[str, Param] = sweep.search.params()
    return {name: DOMAINS[p.kind](p.values) for name, p in params.items()}


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    """Tune's param_space: random search samples it (its repeats as a grid with the sampled values held);
    Optuna is given its space itself, so Tune only sees the fixed values."""
    space = search_space(sweep)
    if sweep.search_alg == "optuna":
        return {name: value for name, value in space.items() if name in sweep.search.fixed()}
    if sweep.repeats > 1:
        space[REPEAT_KEY] = tune.grid_search(list(range(sweep.repeats)))
    return space


def scheduler(sweep: SweepConfig, experiment: str) -> TrialScheduler:
    """ASHA on the reported epoch, its rungs and decisions kept in the experiment; or FIFO."""
    s = sweep.scheduler
    if s.kind == "fifo":
        return FIFOScheduler()
    return RecordedASHA(experiment, max_t=s.max_t, grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def trial_slots(sweep: SweepConfig) -> int:
    """How many trials of the sweep the cluster can run at once now (at least 1)."""
    s = sweep.scaling
    need = {"CPU": s.trial_cpus + s.num_workers * s.cpus_per_worker}
    if s.use_gpu:
        need["GPU"] = s.num_workers * s.gpus_per_worker
    have = ray.cluster_resources()
    return max(1, min(math.floor(have.get(k, 0.0) / v + 1e-9) for k, v in need.items()))


def concurrency(sweep: SweepConfig) -> int | None:
    """Trials at once: the sweep's limit; for model-based search, by default the cluster's trial slots.

    Without a limit Optuna would be asked for every suggestion up front and learn nothing from results.
    """
    if sweep.max_concurrent_trials is not None or sweep.search_alg == "random":
        return sweep.max_concurrent_trials
    return trial_slots(sweep)


def search_alg(sweep: SweepConfig, limit: int | None) -> Searcher | SearchAlgorithm:
    """Seeded random search (repeats as a grid with the sampled values held), or Optuna's TPE with repeats."""
    if sweep.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        # given its space and metric(s) here (a list: multi-objective TPE), Optuna ignores Tune's single metric,
        # which the scheduler uses: the first objective
        metric, mode = sweep.search_metrics
        sampled = {name: domain for name, domain in search_space(sweep).items() if name not in sweep.search.fixed()}
        optuna = OptunaSearch(space=sampled, metric=metric, mode=mode, seed=sweep.seed)
        return RepeatedSearch(optuna, repeats=sweep.repeats, max_concurrent=limit)
    # Tune ignores TuneConfig.max_concurrent_trials for a SearchGenerator such as this one: limit it here.
    return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=limit or 0, constant_grid_search=True)


def make_tuner(sweep: SweepConfig, experiment: str, limit: int | None) -> tune.Tuner:
    """A fresh Tuner for the sweep, writing to `experiment` (= <storage>/<name>)."""
    storage_path, _, name = experiment.rpartition("/")
    samples = sweep.num_samples * (sweep.repeats if sweep.search_alg == "optuna" else 1)
    return tune.Tuner(
        trainable(sweep, experiment),
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode, scheduler=scheduler(sweep, experiment),
            search_alg=search_alg(sweep, limit), num_samples=samples, trial_dirname_creator=trial_dirname,
            # the search algorithms limit concurrency themselves: given here, Tune would wrap Optuna in a
            # ConcurrencyLimiter, whose live trials are lost on resume (their results never reach the model)
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            callbacks=tracking.callbacks(sweep, experiment),
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
    errors: dict[str, str]  # trial_id -> the error file Tune wrote for it
    concurrency: int | None


def collect(experiment: str) -> tuple[list[TrialRecord], dict[str, str]]:
    """Every trial of the experiment with its status, sampled config and logged results; and their error files."""
    trials = sorted(tune.ExperimentAnalysis(experiment).trials, key=lambda t: t.trial_id)
    records = [TrialRecord(t.trial_id, t.status, t.config, read_rows(storage.join(experiment, trial_dirname(t))))
               for t in trials]
    errors = {t.trial_id: storage.join(experiment, trial_dirname(t), "error.txt") for t in trials
              if t.status == Trial.ERROR}
    return records, errors


def finish(sweep: SweepConfig, experiment: str, limit: int | None) -> Outcome:
    """Write the tables for the experiment as it stands and say whether it was interrupted."""
    records, errors = collect(experiment)
    raw = sweep.model_dump(mode="json")
    trials, epochs = trials_frame(records, raw), epochs_frame(records)
    return Outcome(
        experiment=experiment, sweep=sweep, trials=trials, epochs=epochs,
        files=write_tables(experiment, trials, epochs, sweep),
        interrupted=any(r.status not in FINISHED for r in records), errors=errors, concurrency=limit,
    )


def connect(address: str | None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS, as under `ray job submit`), else start a local one; a
    process already connected (a notebook running a second sweep) stays on its cluster."""
    if ray.is_initialized():
        return
    # Keep the dashboard on (the default): Train's placement-group cleaner needs the state API it serves.
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:  # "local": with no address ray.init would join any cluster `ray start` left on this machine
        ray.init(address="local", runtime_env={"worker_process_setup_hook": pin_ray_address})


def run(sweep: SweepConfig, experiment: str, address: str | None = None) -> Outcome:
    """Start the sweep; write sweep.json first (resume reads it) and the tables at the end."""
    connect(address)
    preflight.check_joined_cluster(sweep)  # before any trial: resources, storage seen from the nodes
    write_sweep(experiment, sweep)
    limit = concurrency(sweep)
    make_tuner(sweep, experiment, limit).fit()
    return finish(sweep, experiment, limit)


def resume(experiment: str, address: str | None = None) -> Outcome:
    """Continue an interrupted sweep: unfinished and errored trials go on, finished ones are kept.

    The scheduler keeps its rungs in the experiment directory it was created for, so a sweep resumes where it was
    started (a moved copy would restart ASHA with empty rungs: refused).
    """
    sweep = read_sweep(experiment)
    home = experiment_path(sweep.storage, sweep.name or "")
    if storage.absolute(home) != storage.absolute(experiment):
        raise ConfigError(f"experiment: {experiment} was started at {home}; resume it there (its scheduler's "
                          "state is kept at that place)")
    connect(address)
    preflight.check_joined_cluster(sweep)
    tuner = tune.Tuner.restore(
        experiment, trainable=trainable(sweep, experiment), resume_unfinished=True, resume_errored=True
    )
    tuner.fit()
    return finish(sweep, experiment, sweep.max_concurrent_trials)
