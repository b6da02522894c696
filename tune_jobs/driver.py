"""The Ray edge: a Tune function trainable that fits one TorchTrainer per trial, the Tuner, run and resume.

ASHA and FIFO: each trial's Ray Train run is named after the trial and stored under <experiment>/train_runs,
so a retried trial (Tune's FailureConfig) or a resumed experiment (Tuner.restore) restores the Train run from
its latest checkpoint; Train's own FailureConfig restarts dead workers from it.

PBT and PB2 (Ray 2.60, Train V2 inside a Tune function): an exploit pauses the trial, sets its config to the
explored one and its latest *Tune* checkpoint to the donor's, and starts the function again
(ray/tune/schedulers/pbt.py, _exploit). So every Train checkpoint is also reported to Tune (`ReportToTune`, a
Train UserCallback in the controller that hands each report to this function, which calls tune.report with the
checkpoint: Ray's TuneReportCallback forwards metrics only), each invocation of the function is a fresh Train
run (a segment: a run of the trial's own name would restore its own latest checkpoint over the donor's), and
the segment's start checkpoint, `ray.tune.get_checkpoint()` (own or donor's), travels in train_loop_config
(Train V2's replacement for the deprecated resume_from_checkpoint). Train's FailureConfig still restarts dead
workers inside a segment from the segment's own latest checkpoint.
"""

from __future__ import annotations

import functools
import json
import math
import os
import posixpath
import queue
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search import BasicVariantGenerator, SearchAlgorithm, Searcher

from alignmixup.console import ConfigError
from tune_jobs import pin_ray_address, preflight, raylogs, storage, tracking
from tune_jobs.config import POPULATION, Param, SweepConfig, experiment_path, trial_settings, validate
from tune_jobs.relay import Relay, ReportToTune
from tune_jobs.scheduler import RecordedASHA, milestones, stop_rows
from tune_jobs.schema import (
    BEST_WEIGHTS,
    IDENTITY,
    TRAIN_RUNS,
    TRIAL_STATE,
    TrialRecord,
    epochs_frame,
    read_rows,
    trials_frame,
)
from tune_jobs.search import REPEAT_KEY, RepeatedSearch
from tune_jobs.tables import read_sweep, write_sweep, write_tables
from tune_jobs.worker import META_FILE, CheckpointPlan, read_meta, train_loop_per_worker

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
    return trial_dirname_of(trial.trial_id)


def trial_dirname_of(trial_id: str) -> str:
    """The directory of a trial in its experiment."""
    return f"trial_{trial_id}"


def checkpoint_epochs(sweep: SweepConfig) -> tuple[int, ...]:
    """The epochs at which a trial checkpoints: every checkpoint_every, ASHA's milestones (where it may stop the
    trial), PBT's perturbations (where a donor's checkpoint must exist) and the last epoch."""
    s = sweep.scheduler
    epochs = {*range(sweep.checkpoint_every, s.max_t + 1, sweep.checkpoint_every), s.max_t}
    if s.kind == "asha":  # ASHA decides at the first report whose epoch reaches a milestone
        epochs |= {math.ceil(m) for m in milestones(s.grace_period, s.max_t, s.reduction_factor)}
    if s.kind in POPULATION:
        epochs |= set(range(s.perturbation_interval, s.max_t, s.perturbation_interval))
    return tuple(sorted(epochs))


class TrialState:
    """<experiment>/by_trial/<trial_id>.json, kept by the trial's function across its starts (retries, resumes,
    PBT segments): the trial's identity as first computed, and the last epoch Tune logged for it.

    An exploit gives a trial another configuration, not another identity: it keeps its seed (so a clone does not
    train in lockstep with its donor) and the config_id of the configuration it started from. The last epoch logged
    is the floor below which a restart's re-run epochs are not reported again.
    """

    def __init__(self, experiment: str, trial_id: str) -> None:
        self.location = storage.join(experiment, TRIAL_STATE, f"{trial_id}.json")
        self.state = storage.read_json(self.location) if storage.is_file(self.location) else {"reported": 0}

    def identity(self, report: dict[str, Any]) -> dict[str, Any]:
        """`report` with the trial's first identity (stored the first time)."""
        if "identity" not in self.state:
            self.state["identity"] = {k: report[k] for k in IDENTITY}
            self._write()
        return {**report, **self.state["identity"]}

    @property
    def reported(self) -> int:
        return int(self.state["reported"])

    @reported.setter
    def reported(self, epoch: int) -> None:
        self.state["reported"] = epoch
        self._write()

    def _write(self) -> None:
        storage.write_text(self.location, json.dumps(self.state))


def last_logged_checkpoint(experiment: str, trial_id: str) -> ray.train.Checkpoint | None:
    """The trial's copy of the checkpoint of its newest row Tune logged with one; None if no row has one.

    Tune registers a reported checkpoint with a save round trip to the trial after logging its row: a driver
    stopped in between leaves the checkpoint out of the experiment state, and Tuner.restore gives the trial none, so
    it would train again from epoch 0 (a PBT test sweep's trial that had logged epoch 2 with its checkpoint did).
    """
    trial_dir = storage.join(experiment, trial_dirname_of(trial_id))
    logged = [row for row in read_rows(trial_dir) if row.get("checkpoint_path")]
    if not logged:
        return None
    run = posixpath.basename(posixpath.dirname(logged[-1]["checkpoint_path"].rstrip("/")))  # .../<run>/checkpoint_*
    want = {"run": run, "epoch": logged[-1]["epoch"]}
    for info in storage.children(trial_dir):
        meta = storage.join(trial_dir, info.base_name, META_FILE)
        if info.base_name.startswith("checkpoint_") and storage.is_file(meta):
            stored = storage.read_json(meta)
            if {k: stored.get(k) for k in want} == want:
                fs, path = storage.resolve(storage.join(trial_dir, info.base_name))
                return ray.train.Checkpoint(path, fs)
    return None


def relay_reports(trainer: TorchTrainer, relay: Any, state: TrialState) -> None:
    """Fit the Train run in a thread and tune.report what its controller hands over, until the run ends.

    A second thread takes each report from the relay at once, first copying its checkpoint (if any) to a local
    folder, which Tune copies into the trial's folder when it takes the report: training never waits for Tune's
    driver, only for that copy. After each report returns (Tune has logged the row) its epoch is stored as the
    trial's last one reported, the floor of a later start: after, not before, so that a row Tune never received is
    reported again rather than lost.
    """
    done, box, rows = "__train_run_finished__", {}, queue.Queue()

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:
            box["error"] = exc
        finally:
            relay.put.remote(done, wait=False)

    def take() -> None:
        try:
            while (item := ray.get(relay.get.remote())) != done:
                row, checkpoint = item
                staged = None
                if checkpoint is not None:
                    staged = checkpoint.to_directory(tempfile.mkdtemp(prefix="alignmixup-tune-checkpoint-"))
                    relay.ack.remote()
                rows.put((row, staged))
        except BaseException as exc:
            box.setdefault("error", exc)
        finally:
            rows.put(done)

    threading.Thread(target=fit, daemon=True, name="train-run").start()
    threading.Thread(target=take, daemon=True, name="train-reports").start()
    while (item := rows.get()) != done:
        row, staged = item
        tune.report(row, checkpoint=None if staged is None else tune.Checkpoint.from_directory(staged))
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        state.reported = row["epoch"]
    if "error" in box:
        raise box["error"]


def run_trial(config: dict[str, Any], sweep: dict[str, Any], experiment: str) -> None:
    """One Tune trial (or, under PBT, one segment of it): a Ray Train run of its TrainConfig, reporting every epoch."""
    sw = validate(sweep)
    trial_id = tune.get_context().get_trial_id()
    stopped = stop_rows(experiment).get(trial_id) if sw.scheduler.kind == "asha" else None
    if stopped is not None:
        # ASHA stopped it, but the driver was lost before Tune's experiment state said so: Tuner.restore brings it
        # back as unfinished. Train nothing; if Tune had not logged the row ASHA stopped it at either, report that row
        # as the worker sent it (the scheduler kept it), so that the trial's last row is its STOP.
        logged = read_rows(storage.join(experiment, trial_dirname_of(trial_id)))
        if not any(row.get("epoch") == stopped["epoch"] for row in logged):
            tune.report(stopped)
        return
    sampled = {k: v for k, v in config.items() if k != REPEAT_KEY}
    cfg, identity = trial_settings(sw, sampled, int(config.get(REPEAT_KEY, 0)))
    state = TrialState(experiment, trial_id)
    identity = state.identity(identity)
    cfg = cfg.model_copy(update={"seed": identity["seed"]})
    population = sw.scheduler.kind in POPULATION
    loop: dict[str, Any] = {"train": cfg.model_dump(mode="json"), "identity": identity}
    floor = state.reported
    if population:
        # None, the trial's own latest (pause, retry, restore) or a donor's (exploit)
        start = tune.get_checkpoint() or last_logged_checkpoint(experiment, trial_id)
        loop["start_checkpoint"] = start and ray.train.Checkpoint(start.path, start.filesystem)
        meta = read_meta(start) if start is not None else None
        loop["lineage"] = None
        if meta is not None and meta["trial_id"] != trial_id:  # a new lineage: every epoch of it is new
            loop["lineage"], floor = {"donor_trial_id": meta["trial_id"], "donor_epoch": meta["epoch"]}, 0
    # ASHA/FIFO: same (storage_path, name) on a retry or resume, so Train restores the run from its checkpoint;
    # PBT: a fresh run per segment, which starts from loop["start_checkpoint"]
    run = f"train-{trial_id}" + (f"-{uuid.uuid4().hex[:8]}" if population else "")
    loop["plan"] = asdict(CheckpointPlan(trial_id=trial_id, run=run, epochs=checkpoint_epochs(sw),
                                         best_dir=storage.join(experiment, BEST_WEIGHTS, trial_id),
                                         keep_all_best=population))
    s = sw.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    relay = Relay.remote()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources,
            placement_strategy=s.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=run,
            storage_path=storage.join(experiment, TRAIN_RUNS),
            failure_config=ray.train.FailureConfig(max_failures=sw.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[ReportToTune(relay, floor, checkpoints=population)],
        ),
    )
    relay_reports(trainer, relay, state)


def trainable(sweep: SweepConfig, experiment: str) -> Any:
    """run_trial bound to the sweep, with the trial driver's small CPU share."""
    fn = tune.with_parameters(run_trial, sweep=sweep.model_dump(mode="json"), experiment=experiment)
    return tune.with_resources(fn, {"CPU": sweep.scaling.trial_cpus})


def search_space(sweep: SweepConfig) -> dict[str, Any]:
    """The searched hyperparameters as Tune domains (fixed values stay plain)."""
    params: dict[str, Param] = sweep.space()
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


class _AtPerturbationEpochs:
    """Ray's PBT/PB2 deciding only at multiples of perturbation_interval, before the last epoch; and, when the
    whole population fits the cluster, never pausing a trial that is not exploiting.

    Those epochs have a checkpoint (checkpoint_epochs), so a top trial always has one to give. Ray counts the
    interval from each trial's last perturbation, which Tuner.restore resets to 0 (the scheduler is not saved):
    without this, a restored trial would perturb at epochs with no checkpoint and never be a donor again. A decision
    at the last epoch would restart a finished trial for nothing. Ray's asynchronous PBT pauses a trial at its
    perturbation while any other is PENDING or PAUSED, to give waiting trials the resources (pbt.py,
    on_trial_result); with the population running at once the only such trials are exploiting ones restarting on
    their own resources, and a pause costs a Train worker-group restart from the checkpoint: `fits` skips it.
    """

    def __init__(self, *, experiment: str, max_t: int, fits: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.experiment, self.max_t, self.fits = experiment, max_t, fits
        self.interval = kwargs["perturbation_interval"]

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        epoch = result.get("epoch")
        if epoch is not None and (epoch % self.interval or epoch >= self.max_t):
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if decision == TrialScheduler.PAUSE and self.fits else decision

    def _checkpoint_or_exploit(self, trial: Trial, tune_controller: Any, upper_quantile: list[Trial],
                               lower_quantile: list[Trial]) -> None:
        # Ray's asynchronous PBT keeps a trial's checkpoint for donors only when the trial is in the upper quantile
        # at its own perturbation, and the first trial to report at a perturbation epoch sees no quantiles yet: a
        # trial that is always first to report (the fastest, often the best) is never kept, and every exploit of it
        # is skipped ("no checkpoint for trial ...": a 4-trial test sweep ran to the end with no exploit at all).
        # Every perturbation epoch has a checkpoint here (checkpoint_epochs), so every trial that does not exploit
        # keeps it, through Ray's own saving path (this overrides a method of Ray 2.60's PopulationBasedTraining;
        # tests/test_tune_pbt.py would see exploits vanish if it changed).
        keep = upper_quantile if trial in lower_quantile or trial in upper_quantile else [*upper_quantile, trial]
        super()._checkpoint_or_exploit(trial, tune_controller, keep, lower_quantile)

    def _log_config_on_step(self, trial_state: Any, new_state: Any, trial: Trial, trial_to_clone: Trial,
                            new_config: dict[str, Any]) -> None:
        # after a resume, Ray would start its exploit logs afresh and upload them over the first run's (raylogs)
        raylogs.carry_pbt_logs(self.experiment, trial.local_experiment_path)
        super()._log_config_on_step(trial_state, new_state, trial, trial_to_clone, new_config)


class PopulationBased(_AtPerturbationEpochs, PopulationBasedTraining):
    """Ray Tune's PopulationBasedTraining, at perturbation epochs only."""


class PopulationBasedBandits(_AtPerturbationEpochs, PB2):
    """Ray Tune's PB2, at perturbation epochs only."""


def within_bounds(bounds: dict[str, tuple[float, float]], config: dict[str, Any]) -> dict[str, Any]:
    """PBT's explored config with each numeric mutation kept in its range (Ray multiplies without a bound)."""
    for name, (low, high) in bounds.items():
        config[name] = min(max(config[name], low), high)
    return config


def scheduler(sweep: SweepConfig, experiment: str, fits: bool = True) -> TrialScheduler:
    """ASHA on the reported epoch, its rungs and decisions kept in the experiment; FIFO; or PBT/PB2 on the epoch
    (`fits`: the whole population runs at once on the cluster)."""
    s = sweep.scheduler
    if s.kind == "fifo":
        return FIFOScheduler()
    if s.kind == "asha":
        return RecordedASHA(experiment, max_t=s.max_t, grace_period=s.grace_period,
                            reduction_factor=s.reduction_factor)
    mutations = s.mutations.params()
    bounds = {name: p.values for name, p in mutations.items() if p.kind in ("uniform", "loguniform")}
    common = dict(experiment=experiment, max_t=s.max_t, fits=fits, time_attr="epoch",
                  perturbation_interval=s.perturbation_interval, quantile_fraction=s.quantile_fraction,
                  custom_explore_fn=functools.partial(within_bounds, bounds))
    if s.kind == "pb2":
        return PopulationBasedBandits(hyperparam_bounds={n: list(b) for n, b in bounds.items()}, **common)
    return PopulationBased(
        hyperparam_mutations={name: list(p.values) if p.kind == "choice" else DOMAINS[p.kind](p.values)
                              for name, p in mutations.items()},
        resample_probability=s.resample_probability, perturbation_factors=tuple(s.perturbation_factors), **common,
    )


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
    """A fresh Tuner for the sweep, writing to `experiment` (= <storage>/<name>).

    Tune keeps every checkpoint a PBT trial reports (its CheckpointConfig default): any may be a donor's.
    """
    storage_path, _, name = experiment.rpartition("/")
    fits = sweep.scheduler.kind not in POPULATION or trial_slots(sweep) >= sweep.trials()
    if not fits:
        print(f"warning: the cluster runs {trial_slots(sweep)} of the population's {sweep.trials()} trials at once; "
              f"{sweep.scheduler.kind} pauses running trials for waiting ones at every perturbation", file=sys.stderr)
    samples = sweep.num_samples * (sweep.repeats if sweep.search_alg == "optuna" else 1)
    return tune.Tuner(
        trainable(sweep, experiment),
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode, scheduler=scheduler(sweep, experiment, fits),
            search_alg=search_alg(sweep, limit), num_samples=samples, trial_dirname_creator=trial_dirname,
            # the search algorithms limit concurrency themselves: given here, Tune would wrap Optuna in a
            # ConcurrencyLimiter, whose live trials are lost on resume (their results never reach the model)
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            callbacks=[raylogs.JsonLog(), raylogs.CsvLog(), *tracking.callbacks(sweep, experiment)],
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
