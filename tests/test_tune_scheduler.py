"""RecordedASHA against Ray's own ASHAScheduler, and decisions that survive an interruption (no Ray cluster)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tune_jobs.scheduler import RecordedASHA
from tune_jobs.schema import DECISION_COLUMNS, DECISIONS_TABLE, SCHEDULER_STATE, milestones


@dataclass(frozen=True)
class FakeTrial:
    """All a scheduler reads of a trial."""

    trial_id: str


def result_stream(seed: int, trials: int, max_t: int) -> list[tuple[str, dict]]:
    """Interleaved per-epoch results of `trials` trials, in a random arrival order (each trial's epochs in order)."""
    rng = np.random.default_rng(seed)
    skill = rng.normal(50, 15, trials)
    pending = {f"t{i:02d}": 1 for i in range(trials)}
    stream = []
    while pending:
        trial = rng.choice(sorted(pending))
        epoch = pending[trial]
        value = float(np.round(skill[int(trial[1:])] + 5 * epoch + rng.normal(0, 4), 2))
        stream.append((trial, {"epoch": epoch, "val_acc": value}))
        pending[trial] = epoch + 1
        if epoch == max_t:
            del pending[trial]
    return stream


def replay(scheduler, stream: list[tuple[str, dict]]) -> dict[tuple[str, int], str]:
    """Feed a stream to a scheduler as Tune does (a stopped trial reports no more); its decision per result."""
    decisions, stopped = {}, set()
    for trial_id, result in stream:
        if trial_id in stopped:
            continue
        trial = FakeTrial(trial_id)
        action = scheduler.on_trial_result(None, trial, result)
        decisions[trial_id, result["epoch"]] = action
        if action == TrialScheduler.STOP:
            stopped.add(trial_id)
            scheduler.on_trial_complete(None, trial, result)
    return decisions


def ours(tmp_path: Path, mode: str = "max", **settings) -> RecordedASHA:
    scheduler = RecordedASHA(str(tmp_path), **settings)
    assert scheduler.set_search_properties("val_acc", mode)
    return scheduler


SETTINGS = [dict(max_t=8, grace_period=1, reduction_factor=2), dict(max_t=6, grace_period=2, reduction_factor=2),
            dict(max_t=27, grace_period=3, reduction_factor=3), dict(max_t=4, grace_period=2, reduction_factor=4)]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("mode", ["max", "min"])
def test_decisions_equal_rays_asha(tmp_path: Path, settings: dict, mode: str) -> None:
    for seed in range(3):
        stream = result_stream(seed, trials=10, max_t=settings["max_t"])
        ray_asha = ASHAScheduler(time_attr="epoch", metric="val_acc", mode=mode, **settings)
        for trial_id in sorted({t for t, _ in stream}):
            ray_asha.on_trial_add(None, FakeTrial(trial_id))
        expected = replay(ray_asha, stream)
        folder = tmp_path / f"{mode}-{seed}"
        got = replay(ours(folder, mode, **settings), stream)
        assert got == expected
        assert TrialScheduler.STOP in {a for (_, t), a in expected.items() if t < settings["max_t"]} or seed


def test_milestones_are_rays() -> None:
    assert milestones(1, 8, 2) == [8, 4, 2, 1]
    assert milestones(2, 6, 2) == [4, 2]
    assert milestones(25, 200, 2) == [200, 100, 50, 25]


def test_interrupted_and_resumed_scheduler_decides_as_an_uninterrupted_one(tmp_path: Path) -> None:
    """Kill after the rung-0 decisions, restore a fresh scheduler from the files, replay the rest."""
    settings = dict(max_t=8, grace_period=2, reduction_factor=2)
    stream = result_stream(7, trials=10, max_t=8)
    uninterrupted = replay(ours(tmp_path / "straight", **settings), stream)
    cut = max(i for i, (_, r) in enumerate(stream) if r["epoch"] == 2) + 1  # every rung-0 result seen
    first = ours(tmp_path / "resumed", **settings)
    before = replay(first, stream[:cut])
    del first  # the driver dies; only the files remain
    resumed = ours(tmp_path / "resumed", **settings)
    resumed.on_trial_add(None, FakeTrial("t00"))  # Tune re-adds the restored trials
    stopped = {t for (t, _), a in before.items() if a == TrialScheduler.STOP}
    after = replay(resumed, [(t, r) for t, r in stream[cut:] if t not in stopped])
    assert {**before, **after} == uninterrupted
    # a fresh scheduler that never read the files lets trials continue that ASHA had judged
    forgetful = ours(tmp_path / "forgetful", **settings)  # no files there: ASHA as Ray restores it
    assert replay(forgetful, [(t, r) for t, r in stream[cut:] if t not in stopped]) != after


def test_a_trial_stopped_before_the_interruption_stays_stopped(tmp_path: Path) -> None:
    settings = dict(max_t=8, grace_period=2, reduction_factor=2)
    first = ours(tmp_path, **settings)
    first.on_trial_result(None, FakeTrial("a"), {"epoch": 2, "val_acc": 90.0})
    assert first.on_trial_result(None, FakeTrial("b"), {"epoch": 2, "val_acc": 10.0}) == TrialScheduler.STOP
    resumed = ours(tmp_path, **settings)  # Tune's experiment state still said RUNNING: b restarts from epoch 1
    assert resumed.on_trial_result(None, FakeTrial("b"), {"epoch": 2, "val_acc": 95.0}) == TrialScheduler.STOP


def test_state_and_decisions_files(tmp_path: Path) -> None:
    settings = dict(max_t=4, grace_period=1, reduction_factor=2)
    scheduler = ours(tmp_path, "min", **settings)
    replay(scheduler, [("a", {"epoch": 1, "val_acc": 2.0}), ("b", {"epoch": 1, "val_acc": 3.0}),
                       ("a", {"epoch": 2, "val_acc": 1.0}), ("b", {"epoch": 2, "val_acc": None})])
    table = pd.read_parquet(tmp_path / DECISIONS_TABLE)
    assert list(table.columns) == list(DECISION_COLUMNS)
    assert table[["trial_id", "epoch", "milestone", "value", "decision"]].values.tolist() == [
        ["a", 1, 1.0, 2.0, "CONTINUE"], ["b", 1, 1.0, 3.0, "STOP"], ["a", 2, 2.0, 1.0, "CONTINUE"]]
    assert np.isnan(table["cutoff"][0]) and table["cutoff"][1] == 2.0  # min mode: the cut-off in val_acc units
    state = json.loads((tmp_path / SCHEDULER_STATE).read_text())
    assert state["stopped"] == ["b"] and state["rungs"][-1] == [1, {"a": -2.0, "b": -3.0}]
