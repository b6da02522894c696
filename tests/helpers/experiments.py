"""Synthetic experiment directories, as a finished, running or cut-off alignmixup-tune sweep leaves them.

No training and no Ray cluster: each trial's learning curve is made up (it depends on the hyperparameters, with
noise per seed), but everything around it is the project's own: sweep.json is a validated SweepConfig's dump,
each trial's identity, seed and TrainConfig come from tune_jobs.config.trial_settings, its rows are
EpochMetrics.as_dict() plus the worker's and Tune's keys, ASHA's decisions are made by RecordedASHA (which writes
decisions.parquet and scheduler_state.json itself) on the results in a simulated arrival order (trials run
`concurrency` at a time, each at its own pace), Tune's experiment state lists every trial's status as Ray 2.60
writes it, and the tables (when asked) are written with tune_jobs.schema's trials_frame and epochs_frame.

The returned `Written` holds the truth the tests compare the analysis with: every row written, each trial's
status, whether ASHA stopped it, and (population-based) the true lineage of each trial's final model.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from alignmixup.sinkhorn import RULE_DEFAULTS
from alignmixup.trainer import EpochMetrics, lr_at
from tune_jobs.config import trial_settings, validate
from tune_jobs.schema import (
    BEST_WEIGHTS_FILE,
    DECISIONS_TABLE,
    EPOCHS_TABLE,
    RESULT_FILE,
    SCHEDULER_STATE,
    SWEEP_FILE,
    TRIALS_CSV,
    TRIALS_TABLE,
    TrialRecord,
    epochs_frame,
    trials_frame,
)
from tune_jobs.search import REPEAT_KEY

TRAIN = {"dataset": "digits", "network": "preactresnet18", "width": 0.125, "batch_size": 128, "eval_test": "end",
         "lr_schedule": "cosine"}
SEARCH = {
    "alpha": {"loguniform": [0.2, 4.0]},
    "mix_layers": {"choice": ["0,4", "4", "0,2"]},
    "eps": {"loguniform": [0.01, 1.0]},
    "cost_scaling": "mean",
}
LAYER_BONUS = {"0,4": 3.0, "4": 0.0, "0,2": 1.5}
EVALUATIONS = {"val_ece", "val_fgsm_acc"}  # metrics reported only at evaluation epochs (and the last)
STATE_FILE = "experiment_state-2026-01-01_00-00-00.json"


@dataclass
class Trial:
    """What the writer did with one trial: the truth the analysis is compared with."""

    trial_id: str
    params: dict[str, Any]  # what Tune sampled (params.json)
    identity: dict[str, Any]  # what its reports say about it at the start (config_id, seed, ..., hp_*)
    seconds_per_epoch: float
    status: str = "PENDING"
    rows: list[dict[str, Any]] = field(default_factory=list)  # every complete row of its result.json
    stopped_by_asha: bool = False
    lineage: list[list[Any]] = field(default_factory=list)  # population-based: [trial_id, first, last] oldest first
    best_weights_file: str | None = None  # what its rows name as its best-validation weights (since it improved)


@dataclass
class Written:
    root: Path
    sweep: dict[str, Any]
    trials: dict[str, Trial]
    arrivals: list[tuple[str, int]]  # (trial_id, epoch) in the order the scheduler saw the results
    truncated: Path | None = None

    def status(self, status: str) -> list[str]:
        return [t.trial_id for t in self.trials.values() if t.status == status and t.rows]


def sweep_dump(scheduler: str = "asha", max_t: int = 8, grace_period: int = 1, reduction_factor: float = 2,
               configs: int = 4, repeats: int = 2, seed: int = 3, search_lr: bool = False) -> dict[str, Any]:
    """sweep.json of a sweep as alignmixup-tune writes it (a validated SweepConfig's JSON dump)."""
    search = {**SEARCH, **({"lr": {"loguniform": [0.02, 0.2]}} if search_lr else {})}
    section: dict[str, Any] = {"kind": "fifo" if scheduler == "pbt" else scheduler, "metric": "val_acc",
                               "mode": "max", "max_t": max_t}
    if scheduler == "asha":
        section.update(grace_period=grace_period, reduction_factor=reduction_factor)
    raw = {"name": "synthetic", "train": TRAIN, "search": search, "scheduler": section, "num_samples": configs,
           "repeats": repeats, "seed": seed, "scaling": {"num_workers": 2, "cpus_per_worker": 0.49}}
    return validate(raw).model_dump(mode="json")


def _quality(hp: dict[str, Any]) -> float:
    """The accuracy a configuration tends to (the made-up truth behind the curves)."""
    alpha, eps = float(hp["hp_alpha"]), float(hp["hp_eps"])
    return 62 + 25 * math.exp(-(math.log(alpha) ** 2) / 2) - 6 * abs(math.log10(eps / 0.1)) + LAYER_BONUS[
        str(hp["hp_mix_layers"])]


class _Curve:
    """A trial's training state: the made-up measurements of each epoch, carried across PBT exploits."""

    def __init__(self, rng: np.random.Generator, offset: float) -> None:
        self.rng, self.offset = rng, offset
        self.val = 10.0
        self.best: float | None = None

    def step(self, hp: dict[str, Any]) -> tuple[float, bool]:
        """One more epoch under `hp`: its validation accuracy and whether it is the best so far."""
        target = _quality(hp) + self.offset
        self.val = float(np.clip(self.val + 0.45 * (target - self.val) + self.rng.normal(0, 0.8), 0, 100))
        improved = self.best is None or self.val > self.best
        self.best = self.val if improved else self.best
        return self.val, improved


def _metrics(epoch: int, max_t: int, hp: dict[str, Any], curve: _Curve, cfg: Any, extra: dict[str, Any],
             seconds: float) -> dict[str, Any]:
    """One epoch's report from the trainer (EpochMetrics.as_dict) with made-up numbers."""
    rng = curve.rng
    val_acc, improved = curve.step(hp)
    final = epoch == max_t
    test = val_acc - 1.0 + rng.normal(0, 0.3) if final else None
    evaluations = {}
    for name in extra.get("evaluations", ()):
        if epoch % extra["eval_every"] == 0 or final:
            alpha = float(hp["hp_alpha"])
            value = {"val_ece": 0.03 + 0.25 / (1 + alpha) * (1 - val_acc / 200) + rng.normal(0, 0.004),
                     "val_fgsm_acc": 0.4 * val_acc * alpha / (1 + alpha) + rng.normal(0, 0.5)}[name]
            evaluations[name] = float(value)
    if extra.get("sinkhorn"):
        aligned = rng.random() > 0.15  # an epoch may have no aligned batch: nothing to report
        eps = float(hp["hp_eps"])
        cap = cfg.sinkhorn.max_iter or RULE_DEFAULTS[cfg.sinkhorn.rule][1]
        evaluations["sinkhorn_iters"] = float(min(cap, 4 + 1.5 / eps * rng.uniform(0.9, 1.1))) \
            if aligned else None
        evaluations["sinkhorn_marginal_err"] = float(10 ** (-7 + 2.5 * -math.log10(eps)) * rng.uniform(0.5, 2)) \
            if aligned else None
    samples = 1400
    metrics = EpochMetrics(
        epoch=epoch, train_loss=2.3 * math.exp(-epoch / 3) + 0.1 + rng.normal(0, 0.01),
        val_loss=2.3 * (1 - val_acc / 100) + rng.normal(0, 0.01), val_acc=val_acc,
        val_top5=min(100.0, val_acc + 15), test_acc=test, best_val_acc=curve.best, best_test_acc=test,
        best_val_test_acc=(test - 0.5 if final else None), improved=improved, lr=lr_at(cfg, epoch - 1),
        epoch_time_s=seconds, images_per_s=samples / seconds, train_samples=samples // 2,
        train_samples_global=samples, world_size=2, rank=0, evaluations=evaluations, alpha=float(hp["hp_alpha"]),
        eps=float(hp["hp_eps"]),
    )
    return metrics.as_dict()


def _tune_row(trial: Trial, metrics: dict[str, Any], identity: dict[str, Any], clock: float,
              donor: dict[str, Any] | None) -> dict[str, Any]:
    """A row of result.json: the worker's report (metrics, identity, extras) and Tune's own keys."""
    epoch = metrics["epoch"]
    if metrics["improved"]:
        trial.best_weights_file = f"best_weights/{trial.trial_id}/train-{trial.trial_id}-e{epoch:06d}.safetensors"
    return {
        **metrics, **identity, **(donor or {}), BEST_WEIGHTS_FILE: trial.best_weights_file,
        "train_samples_by_rank": [700, 700], "pid_by_rank": [4100, 4101], "reported_at": 1.76e9 + clock,
        "timestamp": int(1.76e9 + clock), "checkpoint_dir_name": f"checkpoint_{epoch - 1:06d}", "done": False,
        "training_iteration": epoch, "trial_id": trial.trial_id, "date": "2026-01-01_00-00-00",
        "time_this_iter_s": trial.seconds_per_epoch, "time_total_s": trial.seconds_per_epoch * epoch,
        "pid": 4000, "hostname": "node-1", "node_ip": "10.0.0.1", "config": trial.params,
        "time_since_restore": trial.seconds_per_epoch * epoch, "iterations_since_restore": epoch,
        "experiment_tag": trial.trial_id.rsplit("_", 1)[-1],
    }


def _draw(rng: np.random.Generator, distribution: dict[str, list[Any]]) -> Any:
    """A value from a search distribution as sweep.json states it ({loguniform: [lo, hi]} or {choice: [...]})."""
    (kind, values), = distribution.items()
    if kind == "loguniform":
        return float(np.exp(rng.uniform(math.log(values[0]), math.log(values[1]))))
    return values[int(rng.integers(len(values)))]


def _plan(sweep: dict[str, Any], configs: int, repeats: int, seed: int) -> list[Trial]:
    """The trials of the sweep in Tune's order: each sampled configuration, then its repeats."""
    validated = validate(sweep)
    rng = np.random.default_rng(seed)
    trials = []
    for c in range(configs):
        sampled = {name: _draw(rng, sweep["search"][name]) for name in ("alpha", "eps", "mix_layers")}
        if "lr" in validated.search.params():
            sampled["lr"] = _draw(rng, sweep["search"]["lr"])
        for r in range(repeats):
            _, identity = trial_settings(validated, sampled, r)
            params = {**sampled, "cost_scaling": "mean", **({REPEAT_KEY: r} if repeats > 1 else {})}
            index = c * repeats + r
            trials.append(Trial(f"ab12c_{index:05d}", params, identity, float(rng.uniform(20, 40))))
    return trials


def _asha(root: Path, sweep: dict[str, Any]) -> Any:
    from tune_jobs.scheduler import RecordedASHA

    s = sweep["scheduler"]
    scheduler = RecordedASHA(str(root), max_t=s["max_t"], grace_period=s["grace_period"],
                             reduction_factor=s["reduction_factor"])
    scheduler.set_search_properties(s["metric"], s["mode"])
    return scheduler


def _simulate(root: Path, sweep: dict[str, Any], trials: list[Trial], concurrency: int, cut: float | None,
              errors: dict[str, int], extra: dict[str, Any], seed: int) -> tuple[list[tuple[str, int]], float]:
    """Run the trials `concurrency` at a time through the scheduler; stop the clock at `cut` (None: the end).
    Returns the arrivals and the time the last trial ended."""
    s = sweep["scheduler"]
    max_t, asha = s["max_t"], _asha(root, sweep) if s["kind"] == "asha" else None
    cfgs = {t.trial_id: trial_settings(validate(sweep), {k: v for k, v in t.params.items() if k != REPEAT_KEY},
                                       t.identity["repeat"])[0] for t in trials}
    rng = np.random.default_rng(seed + 1)
    curves = {t.trial_id: _Curve(np.random.default_rng([seed, i]), float(rng.normal(0, 1.5)))
              for i, t in enumerate(trials)}
    queue, live, arrivals, clock = list(trials), {}, [], 0.0

    def start(now: float) -> None:
        while queue and len(live) < concurrency:
            trial = queue.pop(0)
            trial.status = "RUNNING"
            live[trial.trial_id] = (now + trial.seconds_per_epoch, trial)

    start(0.0)
    while live:
        tid, (clock, trial) = min(live.items(), key=lambda item: (item[1][0], item[0]))
        if cut is not None and clock > cut:
            break
        epoch = len(trial.rows) + 1
        metrics = _metrics(epoch, max_t, trial.identity, curves[tid], cfgs[tid], extra, trial.seconds_per_epoch)
        row = _tune_row(trial, metrics, trial.identity, clock, None)
        arrivals.append((tid, epoch))
        ended = False
        if asha is not None:
            if asha.decide(tid, row) == "STOP":
                row["done"] = True  # Tune marks the result that a scheduler stopped
                asha.on_trial_complete(None, SimpleNamespace(trial_id=tid), row)
                trial.stopped_by_asha, ended = epoch < max_t, True
        elif epoch == max_t:
            ended = True  # the function trainable returns: Tune does not log its done result again
        trial.rows.append(row)
        if not ended and errors.get(tid) == epoch:
            trial.status, ended = "ERROR", True
        elif ended:
            trial.status = "TERMINATED"
        if ended:
            del live[tid]
            start(clock)
        else:
            live[tid] = (clock + trial.seconds_per_epoch, trial)
    return arrivals, clock


def _perturbed(hp: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    out = dict(hp)
    for name in ("hp_alpha", "hp_eps", "hp_lr"):
        out[name] = float(hp[name] * rng.choice([0.8, 1.25]))
    return out


def _simulate_pbt(sweep: dict[str, Any], trials: list[Trial], interval: int, quantile: float, seed: int,
                  extra: dict[str, Any]) -> list[tuple[str, int]]:
    """Synchronous PBT: all trials train in step; every `interval` epochs the bottom quantile continues from a
    top-quantile trial's checkpoint with perturbed alpha, eps and lr."""
    max_t = sweep["scheduler"]["max_t"]
    validated = validate(sweep)
    rng = np.random.default_rng(seed + 7)
    curves = {t.trial_id: _Curve(np.random.default_rng([seed, i]), float(rng.normal(0, 1.5)))
              for i, t in enumerate(trials)}
    hps = {t.trial_id: {k: v for k, v in t.identity.items() if k.startswith("hp_")} for t in trials}
    donors: dict[str, dict[str, Any]] = {}
    history: dict[str, dict[int, tuple[float, float | None, dict[str, Any], list[list[Any]]]]] = {
        t.trial_id: {} for t in trials}
    arrivals = []
    for t in trials:
        t.status, t.lineage = "TERMINATED", [[t.trial_id, 1, 0]]
    for epoch in range(1, max_t + 1):
        for i, t in enumerate(trials):
            tid, hp = t.trial_id, hps[t.trial_id]
            sampled = {"alpha": hp["hp_alpha"], "eps": hp["hp_eps"], "lr": hp["hp_lr"],
                       "mix_layers": hp["hp_mix_layers"]}
            cfg, _ = trial_settings(validated, sampled, t.identity["repeat"])
            metrics = _metrics(epoch, max_t, hp, curves[tid], cfg, extra, t.seconds_per_epoch)
            identity = {**t.identity, **hp}
            clock = epoch * 100.0 + i  # generations in step: every epoch-e report precedes the exploits after it
            t.rows.append(_tune_row(t, metrics, identity, clock, donors.pop(tid, None)))
            t.lineage[-1][2] = epoch
            history[tid][epoch] = (curves[tid].val, curves[tid].best, dict(hp), [list(s) for s in t.lineage])
            arrivals.append((tid, epoch))
        if epoch % interval or epoch == max_t:
            continue
        ranked = sorted(trials, key=lambda t: -t.rows[-1]["val_acc"])
        k = max(1, math.ceil(len(trials) * quantile))
        for loser in ranked[-k:]:
            donor = ranked[int(rng.integers(0, k))]
            val, best, donor_hp, donor_lineage = history[donor.trial_id][epoch]
            curves[loser.trial_id].val, curves[loser.trial_id].best = val, best
            hps[loser.trial_id] = _perturbed(donor_hp, rng)
            donors[loser.trial_id] = {"donor_trial_id": donor.trial_id, "donor_epoch": epoch}
            loser.lineage = [*[list(s) for s in donor_lineage], [loser.trial_id, epoch + 1, epoch]]
    for t in trials:
        for row in t.rows:  # rows without an exploit carry null donors, as the epochs table stores them
            row.setdefault("donor_trial_id", None)
            row.setdefault("donor_epoch", None)
    return arrivals


def _experiment_state(trials: list[Trial]) -> dict[str, Any]:
    """Tune's experiment state: per trial [json state, runtime metadata], as Ray 2.60 writes them."""
    entries = []
    for t in trials:
        state = {"trainable_name": "run_trial", "trial_id": t.trial_id, "status": t.status, "config": t.params,
                 "experiment_tag": t.trial_id.rsplit("_", 1)[-1], "relative_logdir": f"trial_{t.trial_id}",
                 "evaluated_params": t.params, "placement_group_factory": "80049500"}
        metadata = {"start_time": 1.76e9, "num_failures": int(t.status == "ERROR"), "num_failures_after_restore": 0,
                    "error_filename": "error.txt" if t.status == "ERROR" else None, "pickled_error_filename": None,
                    "last_result": t.rows[-1] if t.rows else {}, "last_result_time": 1.76e9,
                    "metric_analysis": {}, "metric_n_steps": {}, "checkpoint_manager": "80049500"}
        entries.append([json.dumps(state, indent=2), json.dumps(metadata, indent=2)])
    return {"trial_data": entries, "runner_data": {"_earliest_stopping_actor": 0}, "stats": {"start_time": 1.76e9}}


def write_experiment(root: Path, *, scheduler: str = "asha", configs: int = 4, repeats: int = 2, max_t: int = 8,
                     grace_period: int = 1, reduction_factor: float = 2, concurrency: int = 3, seed: int = 0,
                     cut: float | None = None, errors: dict[int, int] | None = None, truncate: bool = False,
                     objectives: list[tuple[str, str]] | None = None, eval_every: int = 4, sinkhorn: bool = False,
                     tables: bool = False, decisions: bool = True, perturbation_interval: int = 2) -> Written:
    """Write an experiment directory at `root` and return what was written.

    scheduler: asha, fifo or pbt (synchronous, with donors on the epochs). cut: stop the sweep's clock at this
    fraction of its whole run (trials in flight are RUNNING, unstarted ones PENDING). errors: trial index ->
    the epoch after which it fails (ERROR, error.txt). truncate: leave half of a RUNNING trial's next row at the
    end of its result.json. objectives: sweep.json's `objectives` (evaluation metrics val_ece, val_fgsm_acc are
    reported every `eval_every` epochs and at max_t). sinkhorn: report Sinkhorn convergence per epoch. tables:
    write trials.parquet/csv and epochs.parquet (as a finished sweep does). decisions: keep ASHA's files.
    """
    root.mkdir(parents=True, exist_ok=False)
    base = sweep_dump(scheduler, max_t, grace_period, reduction_factor, configs, repeats, search_lr=scheduler == "pbt")
    sweep = dict(base)  # what sweep.json says: the validated dump, plus what the schema does not hold yet
    extra = {"sinkhorn": sinkhorn, "eval_every": eval_every,
             "evaluations": [m for m, _ in objectives or () if m in EVALUATIONS]}
    if objectives:  # a multi-objective sweep as it validates: Optuna, the evaluations its objectives need
        sweep["objectives"] = [{"metric": m, "mode": mode} for m, mode in objectives]
        kinds = [{"val_ece": "calibration", "val_fgsm_acc": "fgsm"}[m] for m in extra["evaluations"]]
        sweep.update(search_alg="optuna", train={**sweep["train"], "evaluation": {"kinds": kinds}})
    trials = _plan(base, configs, repeats, seed)
    by_index = {trials[i].trial_id: epoch for i, epoch in (errors or {}).items()}
    if scheduler == "pbt":
        sweep["scheduler"] = {"kind": "pbt", "metric": "val_acc", "mode": "max", "max_t": max_t,
                              "perturbation_interval": perturbation_interval, "quantile_fraction": 0.25}
        arrivals = _simulate_pbt(base, trials, perturbation_interval, 0.25, seed, extra)
    else:
        clock_cut = None
        if cut is not None:
            with tempfile.TemporaryDirectory() as scratch:
                _, total = _simulate(Path(scratch), base, _plan(base, configs, repeats, seed), concurrency, None,
                                     by_index, extra, seed)
            clock_cut = cut * total
        arrivals, _ = _simulate(root, base, trials, concurrency, clock_cut, by_index, extra, seed)
    (root / SWEEP_FILE).write_text(json.dumps(sweep, indent=2))
    truncated = None
    for t in trials:
        if not t.rows:
            continue
        folder = root / f"trial_{t.trial_id}"
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps(t.params))
        text = "".join(json.dumps(row) + "\n" for row in t.rows)
        if truncate and truncated is None and t.status == "RUNNING":
            text += json.dumps({**t.rows[-1], "epoch": len(t.rows) + 1})[:57]
            truncated = folder / RESULT_FILE
        (folder / RESULT_FILE).write_text(text)
        if t.status == "ERROR":
            (folder / "error.txt").write_text("Failure # 1\nTraceback (most recent call last):\nRuntimeError: boom\n")
    if truncate and truncated is None:
        raise ValueError("truncate needs a RUNNING trial that reported (choose cut)")
    (root / STATE_FILE).write_text(json.dumps(_experiment_state(trials)))
    if not decisions:
        for name in (DECISIONS_TABLE, SCHEDULER_STATE):
            (root / name).unlink(missing_ok=True)
    if tables:
        records = [TrialRecord(t.trial_id, t.status, t.params, t.rows) for t in trials if t.rows]
        trials_frame(records, sweep).to_parquet(root / TRIALS_TABLE, index=False)
        trials_frame(records, sweep).to_csv(root / TRIALS_CSV, index=False)
        epochs_frame(records).to_parquet(root / EPOCHS_TABLE, index=False)
    return Written(root, sweep, {t.trial_id: t for t in trials}, arrivals, truncated)
