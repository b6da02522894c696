"""One real PBT sweep (4 trials of 2-worker gloo DDP on digits, through the CLI on the session's Ray head),
interrupted by SIGINT and resumed, then exported.

Checked against oracles outside the code under test: Ray's own PBT log (pbt_global.txt: each exploit's donor and
explored configuration), a plain 2-rank DDP re-run of an exploit's first epoch from the donor's checkpoint with the
plain trainer, the model loaded back from the export and evaluated on the test split, and alignmixup-train
replaying the exported schedule.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from helpers.ray_head import Head

import alignmixup
from alignmixup.config import TrainConfig
from alignmixup.console import ConfigError
from alignmixup.data import load_splits
from alignmixup.trainer import Trainer
from tune_jobs import best
from tune_jobs.cli import EXIT_INTERRUPTED
from tune_jobs.config import validate
from tune_jobs.schema import BEST_WEIGHTS_FILE
from tune_jobs.worker import CHECKPOINT_FILE, META_FILE, load_best

REPO = Path(__file__).resolve().parents[1]
SWEEP_TIMEOUT_S = 900
MAX_T = 5
PBT_SWEEP: dict[str, Any] = {
    "description": "test sweep: PBT of 4 trials of 2-worker DDP on digits, 5 epochs, perturbations at epochs 2 and 4",
    "train": {"dataset": "digits", "network": "preactresnet18", "width": 0.125, "batch_size": 128,
              "weight_decay": 5e-4, "lr_schedule": "cosine", "eval_test": "end"},
    # two hopeless learning rates: those trials trail, so they exploit at the perturbations
    "search": {"lr": {"grid": [0.0005, 0.001, 0.1, 0.2]}, "cost_scaling": "mean"},
    "scheduler": {
        "kind": "pbt", "metric": "val_acc", "mode": "max", "max_t": MAX_T, "perturbation_interval": 2,
        "quantile_fraction": 0.5,
        "mutations": {"lr": {"choice": [0.0005, 0.001, 0.05, 0.1, 0.2]}, "alpha": {"loguniform": [0.2, 4.0]},
                      "eps": {"loguniform": [0.01, 1.0]}, "mix_layers": {"choice": ["0,4", "4", "0,2"]}},
    },
    "num_samples": 1,
    "checkpoint_every": 2,
    "max_failures": 1,
    "seed": 5,
    "scaling": {"num_workers": 2, "cpus_per_worker": 0.24, "trial_cpus": 0.01},
}
MUTATED = ("alpha", "eps", "lr", "mix_layers")


def tune_cli(root: Path, head: Head, *args: str) -> subprocess.Popen:
    """`python -m tune_jobs ARGS` from the repository root on the session's Ray head, output in pbt.log."""
    env = {**head.env, "RAY_ADDRESS": head.gcs,
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), head.env.get("PYTHONPATH", "")) if p)}
    with open(root / "pbt.log", "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "tune_jobs", *args], cwd=REPO, env=env, stdout=fh,
                                stderr=subprocess.STDOUT)


def log_tail(root: Path) -> str:
    return (root / "pbt.log").read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def pbt_run(tmp_path_factory: pytest.TempPathFactory, head: Head) -> dict[str, Any]:
    """Run the sweep; SIGINT it once Ray has logged an exploit and every trial has a checkpoint; resume it."""
    root = tmp_path_factory.mktemp("pbt")
    config = root / "pbt.yaml"
    config.write_text(yaml.safe_dump(PBT_SWEEP))
    experiment = root / "runs" / "pbt"
    start = time.monotonic()
    proc = tune_cli(root, head, "run", str(config), "--storage", str(root / "runs"), "--name", "pbt")

    def exploited_and_checkpointed() -> bool:
        log = experiment / "pbt_global.txt"
        trials = list(experiment.glob("trial_*"))
        return (log.is_file() and bool(log.read_text().strip()) and len(trials) == 4
                and all(any(t.glob("checkpoint_*/" + META_FILE)) for t in trials))

    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    while not exploited_and_checkpointed():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.send_signal(signal.SIGINT)
            pytest.fail(f"no exploit before the sweep ended or timed out ({proc.poll()}): {log_tail(root)}")
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=180) == EXIT_INTERRUPTED, log_tail(root)
    interrupted = pd.read_parquet(experiment / "epochs.parquet")
    resumed_at = time.time()
    proc = tune_cli(root, head, "resume", str(experiment))
    assert proc.wait(timeout=SWEEP_TIMEOUT_S) == 0, log_tail(root)
    return {"experiment": experiment, "before": interrupted, "resumed_at": resumed_at,
            "seconds": time.monotonic() - start}


@pytest.fixture(scope="module")
def tables(pbt_run: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    experiment = pbt_run["experiment"]
    return pd.read_parquet(experiment / "trials.parquet"), pd.read_parquet(experiment / "epochs.parquet")


def exploits_logged_by_ray(experiment: Path, trials: pd.DataFrame) -> list[dict[str, Any]]:
    """Ray's PBT log, one entry per exploit: recipient, donor, and the explored configuration (in order)."""
    by_index = {int(t.rsplit("_", 1)[1]): t for t in trials["trial_id"]}  # tags start with the trial's index
    out = []
    for line in (experiment / "pbt_global.txt").read_text().splitlines():
        target, clone, _, _, _, new_config = json.loads(line)
        out.append({"recipient": by_index[int(target.split("_", 1)[0])],
                    "donor": by_index[int(clone.split("_", 1)[0])], "config": new_config})
    return out


def segments(rows: pd.DataFrame) -> list[pd.DataFrame]:
    """A trial's rows in report order, cut before each row that starts from a donor's checkpoint."""
    starts = [0, *[i for i, d in enumerate(rows["donor_trial_id"]) if isinstance(d, str)], len(rows)]
    return [rows.iloc[a:b] for a, b in itertools.pairwise(starts) if b > a]


def test_exploits_restart_from_the_donor_with_the_explored_hyperparameters(pbt_run, tables) -> None:
    trials, epochs = tables
    logged = exploits_logged_by_ray(pbt_run["experiment"], trials)
    donor_rows = epochs[epochs["donor_trial_id"].notna()]
    assert len(donor_rows) >= 1, "no exploit happened"
    assert len(donor_rows) == len(logged)  # every exploit Ray made started one segment, recorded once
    for recipient in trials["trial_id"]:
        rows = epochs[epochs["trial_id"] == recipient].reset_index(drop=True)
        mine = [e for e in logged if e["recipient"] == recipient]
        exploited = segments(rows)[1:]
        assert len(exploited) == len(mine)
        for segment, exploit in zip(exploited, mine, strict=True):
            first = segment.iloc[0]
            assert first["donor_trial_id"] == exploit["donor"]
            donor = epochs[(epochs["trial_id"] == first["donor_trial_id"]) & (epochs["epoch"] == first["donor_epoch"])
                           & (epochs["reported_at"] < first["reported_at"])].iloc[-1]
            assert first["epoch"] == first["donor_epoch"] + 1  # the epoch counter continues from the donor's
            assert first["donor_epoch"] % 2 == 0 and isinstance(donor[BEST_WEIGHTS_FILE], str)  # a checkpointed epoch
            # the trainer's history is the donor's: the best so far is the donor's or this epoch's
            assert first["best_val_acc"] == max(first["val_acc"], donor["best_val_acc"])
            for name in MUTATED:  # every epoch of the segment trains with the explored values
                assert (segment[f"hp_{name}"] == exploit["config"][name]).all(), name
            assert segment["donor_trial_id"].iloc[1:].isna().all()
    # an exploit changes a trial's configuration, not its identity: 4 trials, 4 seeds
    assert trials["seed"].nunique() == 4 and (trials["status"] == "TERMINATED").all()


def _replay_epoch(rank: int, port: int, cfg: dict, checkpoint: str, best_weights: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    trainer = Trainer(TrainConfig.model_validate(cfg))
    trainer.load_checkpoint(Path(checkpoint))
    load_best(trainer, best_weights)
    metrics = trainer.train_epoch()
    if rank == 0:
        Path(out).write_text(json.dumps(metrics.as_dict()))
    dist.destroy_process_group()


def donor_checkpoint(experiment: Path, donor: pd.Series) -> Path | None:
    """The folder of the checkpoint a donor's row was reported with: its Tune copy, or the Train run's own.

    Either may be gone by now: Train keeps a run's last 2, and Tune numbers a PBT trial's checkpoint folders on
    from its donor's, so a trial that exploited later may have written over its own older ones.
    """
    run = Path(donor["checkpoint_path"]).parent.name  # the donor's Train run (segment) that wrote the checkpoint
    for meta in [*(experiment / f"trial_{donor['trial_id']}").glob(f"checkpoint_*/{META_FILE}"),
                 *(experiment / "train_runs" / run).glob(f"checkpoint_*/{META_FILE}")]:
        stored = json.loads(meta.read_text())
        if stored["run"] == run and stored["epoch"] == donor["epoch"]:
            return meta.parent
    return None


def test_first_epoch_after_an_exploit_is_the_plain_trainer_s_from_the_donor_checkpoint(pbt_run, tables,
                                                                                      tmp_path) -> None:
    """Re-run an exploit's first epoch with plain 2-rank gloo DDP from the donor's checkpoint."""
    trials, epochs = tables
    experiment = pbt_run["experiment"]
    found = []
    for _, first in epochs[epochs["donor_trial_id"].notna()].iterrows():
        donor = epochs[(epochs["trial_id"] == first["donor_trial_id"]) & (epochs["epoch"] == first["donor_epoch"])
                       & (epochs["reported_at"] < first["reported_at"])].iloc[-1]
        if (folder := donor_checkpoint(experiment, donor)) is not None:
            found.append((first, folder))
    assert found, "no donor checkpoint of any exploit is left"
    first, folder = found[0]
    sweep = validate(json.loads((experiment / "sweep.json").read_text()))
    seed = int(trials.set_index("trial_id").loc[first["trial_id"], "seed"])
    cfg = sweep.trial_config({n: first[f"hp_{n}"] for n in sweep.space()}, seed=seed)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "epoch.json"
    meta = json.loads((folder / META_FILE).read_text())
    mp.spawn(_replay_epoch, args=(port, cfg.model_dump(mode="json"), str(folder / CHECKPOINT_FILE),
                                  meta[BEST_WEIGHTS_FILE], str(out)), nprocs=2, join=True)
    plain = json.loads(out.read_text())
    assert plain["epoch"] == first["epoch"]
    for name in ("val_acc", "val_loss", "train_loss", "best_val_acc", "lr", "alpha", "eps"):
        assert plain[name] == first[name], name


def test_resume_continues_the_population(pbt_run, tables) -> None:
    trials, epochs = tables
    before, after = pbt_run["before"], epochs[epochs["reported_at"] > pbt_run["resumed_at"]]
    assert not after.empty, "the interrupted sweep had nothing left to do"
    assert set(before["trial_id"]) == set(trials["trial_id"])  # every trial had started before the interrupt
    for trial_id, rows in after.groupby("trial_id", sort=False):
        first = rows.iloc[0]
        if isinstance(first["donor_trial_id"], str):  # an exploit decided before the interrupt: the donor's epoch
            assert first["epoch"] == first["donor_epoch"] + 1 > 1
            continue
        # its own latest checkpoint, and the epochs re-run after it are not reported again; only the last one
        # may be, when the interrupt fell between Tune logging it and the trial hearing back (never lost instead)
        mine = before[before["trial_id"] == trial_id]
        last, checkpointed = mine["epoch"].iloc[-1], max(mine.loc[mine["checkpoint_path"].notna(), "epoch"], default=0)
        assert first["epoch"] in (last + 1, last) and first["epoch"] > 1
        assert first["epoch"] > checkpointed  # it went on from its last logged checkpoint, not from an older one
    for trial_id in trials["trial_id"]:  # every trial's model went through all epochs
        assert [r["epoch"] for r in best.lineage(epochs, trial_id)] == list(range(1, MAX_T + 1))
        for segment in segments(epochs[epochs["trial_id"] == trial_id].reset_index(drop=True)):
            assert segment["epoch"].is_monotonic_increasing and segment["epoch"].duplicated().sum() <= 1


def test_best_exports_weights_that_reproduce_the_test_accuracy_and_a_schedule_that_replays(pbt_run, tables,
                                                                                         tmp_path) -> None:
    trials, epochs = tables
    experiment = pbt_run["experiment"]
    export = tmp_path / "export"
    done = subprocess.run([sys.executable, "-m", "tune_jobs", "best", str(experiment), "--export", str(export)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads((export / "best.json").read_text())
    chosen = best.of_trial(trials, epochs, summary["trial_id"], "val_acc", "max")
    assert summary["value"] == max(b.value for t in trials["trial_id"]
                                   if (b := best.of_trial(trials, epochs, t, "val_acc", "max")))
    assert done.stdout.startswith(f"best trial {summary['trial_id']}: val_acc {chosen.value:.4g}")
    # the exported weights, loaded back, score the test accuracy the trial reported for its best weights
    cfg = TrainConfig.model_validate_json((export / "train_config.json").read_text())
    model = alignmixup.load_model(export)
    data = load_splits(cfg, torch.device("cpu"))
    correct = total = 0
    with torch.no_grad():
        for x, y in data.eval_batches("test", 512, 0, 1):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    assert 100.0 * correct / total == summary["test_acc"] == chosen.rows[-1]["best_val_test_acc"]
    # the exported schedule (or, when the best trial's model kept its hyperparameters, the schedule of a trial whose
    # model changed them), replayed by alignmixup-train, gives the same alpha and eps at every epoch
    sweep = validate(json.loads((experiment / "sweep.json").read_text()))
    config = export / "train_config.json"
    replayed, schedule = chosen, cfg
    if not cfg.schedule:
        replayed = next(b for t in trials["trial_id"] if (b := best.of_trial(trials, epochs, t, "val_acc", "max"))
                        and best.train_config(sweep, b).schedule)
        schedule = best.train_config(sweep, replayed)
        config = tmp_path / "replay.json"
        config.write_text(schedule.model_dump_json())
    length = schedule.schedule[-1].from_epoch  # up to its last change: every segment takes force (and less time)
    done = subprocess.run([sys.executable, "-m", "alignmixup", "--config", str(config), "--epochs", str(length),
                           "--output-dir", str(tmp_path / "replay")], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "replay" / "metrics.csv") as fh:
        metrics = list(csv.DictReader(fh))
    assert [(int(m["epoch"]), float(m["alpha"]), float(m["eps"])) for m in metrics] == [
        (r["epoch"], r["hp_alpha"], r["hp_eps"]) for r in replayed.rows[:length]]
    assert len({float(m["alpha"]) for m in metrics}) > 1


# ----------------------------------------------------------------------------------- without a Ray cluster


def pbt_with(**change: Any) -> dict[str, Any]:
    """PBT_SWEEP with top-level keys replaced; `scheduler` entries are merged into it."""
    out = json.loads(json.dumps(PBT_SWEEP))
    for key, value in change.items():
        out[key] = {**out[key], **value} if key == "scheduler" else value
    return out


BAD_POPULATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "optuna": ({"search_alg": "optuna", "search": {"cost_scaling": "mean"}}, "search_alg: pbt needs random search"),
    "repeats": ({"repeats": 2}, "repeats: pbt evolves each trial's configuration"),
    "pb2 choice": ({"scheduler": {"kind": "pb2"}}, "scheduler.mutations.lr: PB2 explores numeric ranges only"),
    "pb2 layers": ({"scheduler": {"kind": "pb2", "mutations": {"alpha": {"uniform": [0.5, 2.0]},
                                                               "mix_layers": {"choice": ["0,4", "4"]}}}},
                   "scheduler.mutations.mix_layers: PB2 explores numeric ranges only"),
    "fixed mutation": ({"scheduler": {"mutations": {"alpha": 2.0}}},
                       "scheduler.mutations.alpha: a mutation is a choice or a uniform/loguniform range"),
    "unknown mutation": ({"scheduler": {"mutations": {"weight_decay": {"choice": [1e-4, 5e-4]}}}},
                         "scheduler.mutations.weight_decay: unknown key"),
    "no mutation": ({"scheduler": {"mutations": {}}}, "scheduler.mutations: a population-based schedule needs"),
    "bad layer": ({"scheduler": {"mutations": {"lr": {"choice": [0.1]}, "mix_layers": {"choice": ["0,4", "0,5"]}}}},
                  "scheduler.mutations.mix_layers: preactresnet18 has layers 0..4 (0 = input), got 5"),
    "interval": ({"scheduler": {"perturbation_interval": MAX_T}},
                 f"scheduler.perturbation_interval: must be < max_t ({MAX_T})"),
    "quantile": ({"scheduler": {"quantile_fraction": 0.6}}, "scheduler.quantile_fraction: Input should be less"),
    "one trial": ({"search": {"lr": 0.1, "cost_scaling": "mean"}, "scheduler": {"mutations": {"lr": {
        "choice": [0.1, 0.2]}}}}, "num_samples: a pbt population needs at least 2 trials"),
    "not at once": ({"max_concurrent_trials": 2}, "max_concurrent_trials: pbt needs the whole population at once (4"),
    "searched, not mutated": ({"search": {"lr": {"grid": [0.1, 0.2]}, "weight_decay": {"choice": [1e-4, 5e-4]}}},
                              "search.weight_decay: under pbt an exploit copies the donor's weight_decay"),
    "mutated in train": ({"train": {**PBT_SWEEP["train"], "alpha": 2.0}},
                         "scheduler.mutations.alpha: also set in train"),
    "checkpoint_every 0": ({"checkpoint_every": 0}, "checkpoint_every: Input should be greater than or equal to 1"),
}


@pytest.mark.parametrize("case", list(BAD_POPULATIONS))
def test_bad_population_configs_name_the_key(case: str) -> None:
    change, message = BAD_POPULATIONS[case]
    with pytest.raises(ConfigError) as err:
        validate(pbt_with(**change))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_checkpoint_epochs_cover_milestones_perturbations_and_the_last_epoch() -> None:
    from tune_jobs.driver import checkpoint_epochs

    plain = {k: v for k, v in PBT_SWEEP.items() if k not in ("search", "scheduler")}
    asha = {"kind": "asha", "max_t": 100, "grace_period": 5, "reduction_factor": 3}
    sweep = validate({**plain, "scheduler": asha, "checkpoint_every": 20})
    assert checkpoint_epochs(sweep) == (5, 15, 20, 40, 45, 60, 80, 100)  # ASHA's rungs 5, 15, 45 and every 20
    pbt = validate(pbt_with(scheduler={"max_t": 9, "perturbation_interval": 3}, checkpoint_every=4))
    assert checkpoint_epochs(pbt) == (3, 4, 6, 8, 9)
    fifo = validate({**plain, "scheduler": {"kind": "fifo", "max_t": 3}, "checkpoint_every": 10})
    assert checkpoint_epochs(fifo) == (3,)  # every 10: only the last epoch of a 3-epoch trial


def test_population_schedulers_decide_at_perturbation_epochs_only(monkeypatch) -> None:
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
    from ray.tune.search.sample import Domain

    from tune_jobs import driver

    pbt = driver.scheduler(validate(pbt_with(scheduler={"max_t": 6})), "unused", fits=True)
    assert isinstance(pbt, PopulationBasedTraining)
    mutations = pbt._hyperparam_mutations  # what Ray explores: choices as lists, ranges as Tune domains
    assert mutations["lr"] == [0.0005, 0.001, 0.05, 0.1, 0.2] and isinstance(mutations["alpha"], Domain)
    assert driver.within_bounds({"alpha": (0.2, 4.0)}, {"alpha": 4.8, "lr": 9.0}) == {"alpha": 4.0, "lr": 9.0}
    calls = []
    monkeypatch.setattr(PopulationBasedTraining, "on_trial_result",
                        lambda self, controller, trial, result: calls.append(result["epoch"]) or TrialScheduler.PAUSE)
    assert [pbt.on_trial_result(None, None, {"epoch": e}) for e in range(1, 7)] == ["CONTINUE"] * 6
    assert calls == [2, 4]  # Ray decides at multiples of perturbation_interval, not at the last epoch
    crowded = driver.scheduler(validate(pbt_with()), "unused", fits=False)
    assert crowded.on_trial_result(None, None, {"epoch": 2}) == TrialScheduler.PAUSE  # Ray's own pause kept
    pb2 = driver.scheduler(validate(pbt_with(scheduler={
        "kind": "pb2", "mutations": {"alpha": {"uniform": [0.5, 2.0]}, "lr": {"loguniform": [0.01, 0.2]}}})),
        "unused")
    assert pb2._hyperparam_bounds == {"alpha": [0.5, 2.0], "lr": [0.01, 0.2]}


def test_quickstart_pbt_fits_two_cores_and_checkpoints_at_every_perturbation() -> None:
    from tune_jobs import presets
    from tune_jobs.driver import checkpoint_epochs

    sweep = validate(presets.load_raw("quickstart-pbt")[0])
    s = sweep.scaling
    assert sweep.scheduler.kind == "pbt" and sweep.trials() == 4 and s.num_workers == 2 and not s.use_gpu
    assert sweep.trials() * (s.trial_cpus + s.num_workers * s.cpus_per_worker) <= 2
    assert set(sweep.mutated()) == {"alpha", "eps", "lr", "mix_layers"}
    perturbations = set(range(sweep.scheduler.perturbation_interval, sweep.scheduler.max_t,
                              sweep.scheduler.perturbation_interval))
    assert perturbations <= set(checkpoint_epochs(sweep))
    gpu = validate(presets.load_raw("cifar10-preactresnet18-pbt")[0])
    assert gpu.scaling.use_gpu and gpu.trials() * gpu.scaling.gpus_per_worker == 4  # the population on 4 GPUs
