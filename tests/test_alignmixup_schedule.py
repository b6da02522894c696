"""TrainConfig.schedule: validated, applied epoch by epoch by the trainer, reported, replayed by alignmixup-train."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

from alignmixup.cli import build_parser, command_line, config_from_args
from alignmixup.config import TrainConfig, error_line
from alignmixup.console import ConfigError
from alignmixup.trainer import Trainer, lr_at

TIMING = {"epoch_time_s", "images_per_s"}
SCHEDULE = [{"from_epoch": 2, "alpha": 0.3}, {"from_epoch": 3, "eps": 0.5, "mix_layers": [4], "lr": 0.02}]


def small(**kw) -> TrainConfig:
    base = dict(dataset="digits", width=0.125, epochs=3, batch_size=128, lr=0.05, lr_schedule="cosine",
                eval_test="end", threads=2, seed=1, sinkhorn={"cost_scaling": "mean"})
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def scheduled() -> tuple[Trainer, list[tuple[int, int]]]:
    """Three epochs under SCHEDULE, with the mixing layer each batch drew."""
    trainer = Trainer(small(schedule=SCHEDULE))
    layers: list[tuple[int, int]] = []
    step = trainer.step
    trainer.step = lambda x, y: (out := step(x, y), layers.append((trainer.epoch + 1, out[1].layer)))[0]
    trainer.fit()
    return trainer, layers


@pytest.mark.parametrize(("schedule", "message"), [
    ([{"from_epoch": 3, "alpha": 1.0}, {"from_epoch": 3, "eps": 1.0}],
     "schedule.1.from_epoch: segments must ascend (got 3 after 3)"),
    ([{"from_epoch": 4, "alpha": 1.0}], "schedule.0.from_epoch: beyond the run's 3 epochs (got 4)"),
    ([{"from_epoch": 0, "alpha": 1.0}], "schedule.0.from_epoch: Input should be greater than or equal to 1"),
    ([{"from_epoch": 2, "alpha": 0.0}], "schedule.0.alpha: Input should be greater than 0 (got 0.0)"),
    ([{"from_epoch": 2, "eps": -1.0}], "schedule.0.eps: Input should be greater than 0"),
    ([{"from_epoch": 2, "mix_layers": [0, 5]}], "schedule.0.mix_layers: preactresnet18 has layers 0..4 (0 = input), "
                                                "got 5"),
    ([{"from_epoch": 2, "mix_layers": []}], "schedule.0.mix_layers: must not be empty"),
    ([{"from_epoch": 2, "gamma": 1.0}], "schedule.0.gamma: Extra inputs are not permitted"),
])
def test_bad_schedules_name_the_segment_and_field(schedule, message) -> None:
    with pytest.raises(ValidationError) as err:
        small(schedule=schedule)
    assert error_line(err.value).startswith(message)


def test_values_in_force_follow_the_segments() -> None:
    cfg = small(alpha=2.0, epochs=4, schedule=SCHEDULE)
    forced = [cfg.in_force(e) for e in range(1, 5)]
    assert [(f.alpha, f.eps, f.lr, f.mix_layers) for f in forced] == [
        (2.0, 0.1, 0.05, [0, 4]), (0.3, 0.1, 0.05, [0, 4]), (0.3, 0.5, 0.02, [4]), (0.3, 0.5, 0.02, [4])]


def test_trainer_applies_the_schedule_each_epoch(scheduled) -> None:
    trainer, layers = scheduled
    history = trainer.history
    assert [(m.alpha, m.eps) for m in history] == [(2.0, 0.1), (0.3, 0.1), (0.3, 0.5)]
    # the lr schedule (cosine) runs from the base lr in force: 0.05, then 0.02 from epoch 3
    cosine = small()
    assert [m.lr for m in history] == [lr_at(cosine, 0, 0.05), lr_at(cosine, 1, 0.05), lr_at(cosine, 2, 0.02)]
    assert {layer for epoch, layer in layers if epoch <= 2} == {0, 4}  # the release's pair, drawn per batch
    assert {layer for epoch, layer in layers if epoch == 3} == {4}
    assert (trainer.mixer.alpha, trainer.mixer.sinkhorn.eps) == (0.3, 0.5)


def comparable(trainer: Trainer) -> list[dict]:
    return [{k: v for k, v in m.as_dict().items() if k not in TIMING} for m in trainer.history]


def test_a_schedule_restating_the_values_changes_nothing() -> None:
    plain = Trainer(small(epochs=2))
    plain.fit()
    restated = Trainer(small(epochs=2, schedule=[{"from_epoch": 2, "alpha": 2.0, "eps": 0.1, "lr": 0.05}]))
    restated.fit()
    assert comparable(plain) == comparable(restated)


def test_resume_inside_a_schedule_is_bit_for_bit(scheduled, tmp_path) -> None:
    first = Trainer(small(schedule=SCHEDULE))
    first.train_epoch()
    first.train_epoch()
    first.save_checkpoint(tmp_path / "ckpt.pt")
    resumed = Trainer(small(schedule=SCHEDULE))
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    resumed.fit()
    assert comparable(scheduled[0]) == comparable(resumed)


def test_alignmixup_train_replays_a_config_file_and_reports_alpha_and_eps(tmp_path) -> None:
    cfg = small(epochs=2, schedule=[{"from_epoch": 2, "alpha": 0.3, "eps": 0.5}])
    path = tmp_path / "train_config.json"
    path.write_text(cfg.model_dump_json())
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "alignmixup", "--config", str(path), "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(float(r["alpha"]), float(r["eps"])) for r in rows] == [(2.0, 0.1), (0.3, 0.5)]
    stored = torch.load(out / "checkpoint.pt", weights_only=True)["config"]
    assert TrainConfig.model_validate(stored) == cfg  # resume keeps the schedule


def test_config_file_flags_override_it_and_command_line_refuses_a_schedule(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(small(schedule=SCHEDULE).model_dump_json())
    cfg = config_from_args(build_parser().parse_args(["--config", str(path), "--epochs", "5", "--sinkhorn-max-iter",
                                                      "7"]))
    assert cfg.epochs == 5 and cfg.schedule == small(schedule=SCHEDULE).schedule
    assert (cfg.sinkhorn.max_iter, cfg.sinkhorn.cost_scaling) == (7, "mean")  # one Sinkhorn flag, not all of them
    with pytest.raises(ValueError, match=r"^schedule: a schedule cannot be spelt as alignmixup-train flags"):
        command_line(cfg)
    plain = small()
    assert config_from_args(build_parser().parse_args(command_line(plain))) == plain
    for argv, message in [
        (["--config", str(tmp_path / "none.json")], "argument --config: cannot read"),
        (["--config", str(path), "--preset", "digits-preactresnet18"], "argument --config: give --config or"),
        (["--config", str(path), "--epochs", "2"], "schedule.1.from_epoch: beyond the run's 2 epochs (got 3)"),
    ]:
        with pytest.raises(ConfigError) as err:
            config_from_args(build_parser().parse_args(argv))
        assert str(err.value).startswith(message)
