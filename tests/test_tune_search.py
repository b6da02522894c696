"""RepeatedSearch: repeats of each suggestion, a concurrency limit, and a state that survives save/restore."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tune_jobs.search import REPEAT_KEY, RepeatedSearch


class CountingSearcher(Searcher):
    """Suggests {"x": 0}, {"x": 1}, ... and records what it is told."""

    def __init__(self) -> None:
        super().__init__(metric="val_acc", mode="max")
        self.next, self.completed = 0, []

    def suggest(self, trial_id: str) -> dict[str, Any]:
        self.next += 1
        return {"x": self.next - 1}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.completed.append((trial_id, result, error))

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(f"{self.next}")

    def restore(self, checkpoint_path: str) -> None:
        self.next = int(Path(checkpoint_path).read_text())


def test_repeats_limit_and_the_mean_reaches_the_model() -> None:
    base = CountingSearcher()
    search = RepeatedSearch(base, repeats=3, max_concurrent=4)
    got = {t: search.suggest(t) for t in ("a", "b", "c", "d")}
    assert got == {"a": {"x": 0, REPEAT_KEY: 0}, "b": {"x": 0, REPEAT_KEY: 1}, "c": {"x": 0, REPEAT_KEY: 2},
                   "d": {"x": 1, REPEAT_KEY: 0}}
    assert search.suggest("e") is None  # four live trials
    search.on_trial_complete("a", {"val_acc": 10.0})
    assert search.suggest("e") == {"x": 1, REPEAT_KEY: 1}
    search.on_trial_complete("b", {"val_acc": 20.0})
    assert base.completed == []  # the model learns a configuration once every repeat has ended
    search.on_trial_complete("c", None, error=True)
    assert base.completed == [("a", {"val_acc": 15.0}, False)]  # the errored repeat does not count


def test_state_survives_save_and_restore(tmp_path: Path) -> None:
    first = RepeatedSearch(CountingSearcher(), repeats=2, max_concurrent=3)
    for t in ("a", "b", "c"):
        first.suggest(t)
    first.on_trial_complete("a", {"val_acc": 1.0})
    first.save(str(tmp_path / "state.pkl"))
    base = CountingSearcher()
    resumed = RepeatedSearch(base, repeats=2, max_concurrent=3)
    resumed.restore(str(tmp_path / "state.pkl"))
    assert resumed.suggest("d") == {"x": 1, REPEAT_KEY: 1}  # c's repeat group goes on; b and c are still live
    assert resumed.suggest("e") is None
    resumed.on_trial_complete("b", {"val_acc": 3.0})  # a trial that was running when the sweep was cut off
    assert base.completed == [("a", {"val_acc": 2.0}, False)]
    assert base.next == 2


def test_optuna_study_continues_after_restore(tmp_path: Path) -> None:
    def make() -> RepeatedSearch:
        search = RepeatedSearch(OptunaSearch(seed=0), repeats=2, max_concurrent=2)
        assert search.set_search_properties("val_acc", "max", {"alpha": tune.uniform(0.1, 4.0)})
        return search

    first = make()
    for i in range(6):
        trial = f"t{i}"
        config = first.suggest(trial)
        first.on_trial_complete(trial, {"val_acc": -abs(config["alpha"] - 2.0)})
    first.save(str(tmp_path / "state.pkl"))
    resumed = make()
    resumed.restore(str(tmp_path / "state.pkl"))
    study = resumed.base._ot_study  # Optuna's own object: what the model has learnt
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 3 and all(not math.isnan(t.value) for t in finished)
    config = resumed.suggest("t6")
    assert config[REPEAT_KEY] == 0 and 0.1 <= config["alpha"] <= 4.0
    assert len(resumed.base._ot_study.trials) == 4
