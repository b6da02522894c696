"""`alignmixup-tune best` on synthetic experiment directories (no Ray): lineage, choice over seeds, the schedule,
the export, and a real trained digits model loaded back with alignmixup.load_model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import alignmixup
from alignmixup.cli import build_parser, command_line, config_from_args
from alignmixup.config import TrainConfig
from alignmixup.data import load_splits
from alignmixup.trainer import Trainer
from alignmixup.weights import read_header, weights_bytes
from tune_jobs import best, cli, config
from tune_jobs.schema import (
    EPOCHS_TABLE,
    HP_PREFIX,
    SWEEP_FILE,
    TRIALS_TABLE,
    TrialRecord,
    epochs_frame,
    trials_frame,
)

TRAIN = {"dataset": "digits", "network": "preactresnet18", "width": 0.125, "batch_size": 128, "lr_schedule": "cosine",
         "eval_test": "end"}
PBT = {
    "train": TRAIN, "search": {"lr": {"grid": [0.05, 0.2]}},
    "scheduler": {"kind": "pbt", "max_t": 4, "perturbation_interval": 2, "quantile_fraction": 0.5,
                  "mutations": {"lr": {"choice": [0.05, 0.1, 0.2]}, "alpha": {"loguniform": [0.5, 4.0]},
                                "eps": {"loguniform": [0.01, 1.0]}, "mix_layers": {"choice": ["0,4", "4"]}}},
    "num_samples": 1, "seed": 11, "scaling": {"num_workers": 2, "cpus_per_worker": 0.24},
}
ASHA = {
    "train": TRAIN, "search": {"alpha": {"grid": [1.0, 2.0]}},
    "scheduler": {"kind": "asha", "max_t": 4, "grace_period": 2, "reduction_factor": 2},
    "repeats": 2, "seed": 11, "scaling": {"num_workers": 2, "cpus_per_worker": 0.49},
}


@pytest.fixture(scope="module")
def trained() -> dict[str, Any]:
    """A real digits model (2 epochs, the sweeps' network) with its best weights and their test accuracy."""
    trainer = Trainer(TrainConfig(**TRAIN, epochs=2, threads=2, seed=3))
    trainer.fit()
    trainer.model_without_ddp.load_state_dict(trainer.best_state)
    return {"state": trainer.best_state, "test_acc": trainer.evaluate("test")[1], "cfg": trainer.cfg,
            "val_acc": max(m.val_acc for m in trainer.history)}


def hp(sweep: config.SweepConfig, **sampled: Any) -> dict[str, Any]:
    """The hp_ columns of a trial with these sampled values, as the worker reports them."""
    return {HP_PREFIX + k: v for k, v in config.hyperparameter_values(sweep.trial_config(sampled)).items()}


def row(epoch: int, val: float, at: float, hps: dict[str, Any], ident: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"epoch": epoch, "val_acc": val, "best_val_acc": val, "best_val_test_acc": None, "reported_at": at,
            "time_total_s": at, "best_weights_file": None, "donor_trial_id": None, "donor_epoch": None,
            **hps, **ident, **extra}


def identity(seed: int, cid: str = "c") -> dict[str, Any]:
    return {"config_id": cid, "seed": seed, "repeat": 0, "dataset": "digits", "network": "preactresnet18",
            "width": 0.125}


def write_experiment(root: Path, sweep: config.SweepConfig, rows: dict[str, list[dict[str, Any]]]) -> Path:
    records = [TrialRecord(t, "TERMINATED", {}, r) for t, r in rows.items()]
    root.mkdir(parents=True, exist_ok=True)
    raw = sweep.model_dump(mode="json")
    (root / SWEEP_FILE).write_text(json.dumps(raw))
    trials_frame(records, raw).to_parquet(root / TRIALS_TABLE, index=False)
    epochs_frame(records).to_parquet(root / EPOCHS_TABLE, index=False)
    return root


def weights_file(path: Path, trained: dict[str, Any], epoch: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(weights_bytes(trained["state"], trained["cfg"], epoch=epoch, trial_id="x",
                                   val_acc=trained["val_acc"], test_acc=None))
    return str(path)


@pytest.fixture()
def pbt_experiment(tmp_path: Path, trained: dict[str, Any]) -> dict[str, Any]:
    """Trial a: 4 epochs of its own. Trial b: 2 epochs, then an exploit of a's epoch-2 checkpoint with explored
    values; b's model (a's epochs 1-2, then b's 3-4) is the best, and its weights are the real trained model."""
    sweep = config.validate(PBT)
    start = {"alpha": 1.5, "eps": 0.2, "mix_layers": "0,4"}
    ha, hb = hp(sweep, lr=0.2, **start), hp(sweep, lr=0.05, **start)
    explored = hp(sweep, lr=0.1, alpha=1.8, eps=0.2, mix_layers="4")
    ia, ib = identity(101, "ca"), identity(202, "cb")
    a_best = weights_file(tmp_path / "w" / "a-e2.safetensors", trained, 2)
    b_best = weights_file(tmp_path / "w" / "b-e3.safetensors", trained, 3)
    rows = {
        "a_00000": [row(1, 50.0, 1, ha, ia), row(2, 70.0, 2, ha, ia, best_weights_file=a_best), row(3, 72.0, 3, ha, ia),
                    row(4, 71.0, 5, ha, ia, best_weights_file=a_best, best_val_test_acc=69.0)],
        "b_00001": [row(1, 20.0, 1, hb, ib), row(2, 30.0, 2, hb, ib, best_weights_file="gone"),
                    row(3, 85.0, 4, explored, ib, donor_trial_id="a_00000", donor_epoch=2),
                    row(4, 84.0, 6, explored, ib, best_weights_file=b_best, best_val_test_acc=trained["test_acc"])],
    }
    rows["b_00001"][-1]["best_val_acc"] = 85.0
    return {"experiment": write_experiment(tmp_path / "exp", sweep, rows), "sweep": sweep, "a": ha,
            "explored": explored, "b_best": b_best}


def test_lineage_follows_the_donor_as_it_stood_and_skips_abandoned_epochs() -> None:
    def r(trial: str, epoch: int, at: float, donor: str | None = None, donor_epoch: int | None = None):
        return {"trial_id": trial, "epoch": epoch, "reported_at": at, "donor_trial_id": donor,
                "donor_epoch": donor_epoch}

    epochs = pd.DataFrame([
        # d: 1, 2 own; at time 10 it exploits e's epoch 1 (so its epoch 2 is reported again, later)
        r("d", 1, 1), r("d", 2, 2), r("d", 2, 11, "e", 1), r("d", 3, 12),
        r("e", 1, 1), r("e", 2, 3),
        # f exploited d's epoch 2 at time 5: d's first epoch-2 row, not the one d reported after its own exploit
        r("f", 1, 1), r("f", 3, 5, "d", 2), r("f", 4, 6),
        # g resumed from its epoch-2 checkpoint after reporting epoch 3; its re-run epoch 3 was not re-reported
        r("g", 1, 1), r("g", 2, 2), r("g", 3, 3), r("g", 4, 8),
    ])
    path = lambda t: [(x["trial_id"], x["reported_at"]) for x in best.lineage(epochs, t)]
    assert path("f") == [("d", 1), ("d", 2), ("f", 5), ("f", 6)]
    assert path("d") == [("e", 1), ("d", 11), ("d", 12)]
    assert path("g") == [("g", 1), ("g", 2), ("g", 3), ("g", 8)]
    with pytest.raises(best.LineageError, match="trial h: no row for epoch 2"):
        best.lineage(pd.concat([epochs, pd.DataFrame([r("h", 1, 1), r("h", 3, 2)])]), "h")


def test_best_traces_the_exploit_and_exports_a_replayable_schedule(pbt_experiment, trained, tmp_path,
                                                                   capsys) -> None:
    export = tmp_path / "export"
    assert cli.main(["best", str(pbt_experiment["experiment"]), "--export", str(export)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("best trial b_00001: val_acc 85 at epoch 3")
    assert "lineage: epochs 1-2 by a_00000, 3-4 by b_00001; 1 hyperparameter change(s)" in out
    assert f"best-validation weights: {pbt_experiment['b_best']} (epoch 3" in out
    assert f"reproduce: alignmixup-train --config {export / 'train_config.json'}" in out
    cfg = TrainConfig.model_validate_json((export / "train_config.json").read_text())
    a, explored = pbt_experiment["a"], pbt_experiment["explored"]
    # epochs 1-2 with a's values (its model), from epoch 3 the explored ones; b's own seed
    assert (cfg.alpha, cfg.sinkhorn.eps, cfg.lr, cfg.mix_layers) == (a["hp_alpha"], a["hp_eps"], a["hp_lr"], [0, 4])
    assert [s.model_dump(exclude_none=True) for s in cfg.schedule] == [
        {"from_epoch": 3, "alpha": explored["hp_alpha"], "lr": explored["hp_lr"], "mix_layers": [4]}]
    assert cfg.seed == 202 and cfg.epochs == 4 and cfg.split_seed == PBT["seed"]
    summary = json.loads((export / "best.json").read_text())
    assert [(s["epoch"], s["trial_id"]) for s in summary["lineage"]] == [
        (1, "a_00000"), (2, "a_00000"), (3, "b_00001"), (4, "b_00001")]
    # the exported weights are the trained model: loaded back, they score its test accuracy on the test split
    model = alignmixup.load_model(export)
    assert not model.training and read_header((export / "model.safetensors").read_bytes())["config"] == cfg
    data = load_splits(cfg, torch.device("cpu"))
    correct = total = 0
    with torch.no_grad():
        for x, y in data.eval_batches("test", 512, 0, 1):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    assert 100.0 * correct / total == trained["test_acc"] == summary["test_acc"]


def test_best_by_another_metric_and_bad_input(pbt_experiment, tmp_path, capsys) -> None:
    experiment = str(pbt_experiment["experiment"])
    assert cli.main(["best", experiment, "--metric", "val_acc", "--mode", "min"]) == 0
    assert capsys.readouterr().out.startswith("best trial a_00000: val_acc 50 at epoch 1")  # b's lineage starts at 50
    assert cli.main(["best", experiment, "--metric", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alignmixup-tune: error: argument --metric: the epochs table has no 'nope'")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / SWEEP_FILE).write_text(json.dumps(pbt_experiment["sweep"].model_dump(mode="json")))
    assert cli.main(["best", str(tmp_path / "empty")]) == 2
    assert "has no trials.parquet yet" in capsys.readouterr().err


def test_with_repeats_the_best_configuration_by_its_mean_then_its_best_seed(tmp_path, trained, capsys) -> None:
    sweep = config.validate(ASHA)
    files = {t: weights_file(tmp_path / "w" / f"{t}.safetensors", trained, 4) for t in ("x0", "x1", "y0", "y1")}
    rows = {}
    for trial, alpha, seed, vals in [("x0", 1.0, 10, [60, 90]), ("x1", 1.0, 11, [70, 80]),
                                     ("y0", 2.0, 20, [80, 88]), ("y1", 2.0, 21, [85, 87])]:
        hps, ident = hp(sweep, alpha=alpha), identity(seed, f"c{alpha}")
        rows[trial] = [row(e, v, e, hps, ident, best_weights_file=files[trial]) for e, v in enumerate(vals, start=1)]
    assert cli.main(["best", str(write_experiment(tmp_path / "exp", sweep, rows))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("best trial y0: val_acc 88 at epoch 2")  # x0 alone has 90, but x's mean is 85 < 87.5
    assert "chosen over seeds: configuration c2.0 has the best mean val_acc (87.5 over 2 seeds)" in out
    cfg = sweep.trial_config({"alpha": 2.0}, seed=20)
    assert f"reproduce: alignmixup-train {' '.join(command_line(cfg))}\n" in out + "\n"
    assert config_from_args(build_parser().parse_args(command_line(cfg))) == cfg
