"""Model-based search (Optuna) with repeats and a concurrency limit whose whole state survives a resume.

Ray's `Repeater` and `ConcurrencyLimiter` save only the searcher they wrap: after `Tuner.restore` the repeat
groups and the live trials are gone, so the first result of a trial that was running when the sweep was cut
off fails with a KeyError (Repeater) or never reaches the model (ConcurrencyLimiter drops results of trials it
does not know). `RepeatedSearch` does both jobs and saves everything with the experiment state.
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import Searcher

REPEAT_KEY = "repeat"  # the trial config's repeat index (0..repeats-1); the trial's seed is derived from it


@dataclass
class _Group:
    """One suggested configuration and the trials that repeat it (the first one is what the model knows)."""

    config: dict[str, Any]
    trials: list[str] = field(default_factory=list)
    results: dict[str, dict[str, float]] = field(default_factory=dict)


class RepeatedSearch(Searcher):
    """Each configuration the base searcher suggests trains `repeats` times; at most `max_concurrent` trials live.

    The base searcher learns the mean over a configuration's repeats of each metric it optimises (NaN-aware: an
    errored repeat does not count), once every repeat has ended.
    """

    def __init__(self, base: Searcher, repeats: int = 1, max_concurrent: int | None = None) -> None:
        super().__init__(metric=base.metric, mode=base.mode)
        self.base, self.repeats, self.max_concurrent = base, repeats, max_concurrent
        self.groups: list[_Group] = []
        self.group_of: dict[str, int] = {}
        self.live: set[str] = set()

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        if not self.base.set_search_properties(metric, mode, config, **spec):
            return False
        self._metric, self._mode = self.base.metric, self.base.mode
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.max_concurrent is not None and len(self.live) >= self.max_concurrent:
            return None
        open_group = self.groups and len(self.groups[-1].trials) < self.repeats
        if not open_group:
            config = self.base.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                return config
            self.groups.append(_Group(dict(config)))
        group = self.groups[-1]
        group.trials.append(trial_id)
        self.group_of[trial_id] = len(self.groups) - 1
        self.live.add(trial_id)
        return {**group.config, REPEAT_KEY: len(group.trials) - 1}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        group = self.groups[self.group_of[trial_id]]
        if self.repeats == 1:  # intermediate values mean something to the model only for a single run
            self.base.on_trial_result(group.trials[0], result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self.live.discard(trial_id)
        group = self.groups[self.group_of[trial_id]]
        group.results[trial_id] = {m: math.nan if error or not result or result.get(m) is None else float(result[m])
                                   for m in self._metrics()}
        if len(group.results) < self.repeats:
            return
        means = {m: _nanmean([r[m] for r in group.results.values()]) for m in self._metrics()}
        failed = all(math.isnan(v) for v in means.values())
        self.base.on_trial_complete(group.trials[0], result=None if failed else means, error=failed)

    def _metrics(self) -> list[str]:
        return list(self._metric) if isinstance(self._metric, list | tuple) else [self._metric]

    # ------------------------------------------------------------------ persistence (Tune calls save/restore)

    def save(self, checkpoint_path: str) -> None:
        own = {k: v for k, v in self.__dict__.items() if k != "base"}
        with tempfile.TemporaryDirectory() as folder:
            inner = os.path.join(folder, "base.pkl")
            self.base.save(inner)
            with open(inner, "rb") as fh:
                base_state = fh.read()
        with open(checkpoint_path, "wb") as fh:
            pickle.dump({"own": own, "base": base_state}, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            saved = pickle.load(fh)
        self.__dict__.update(saved["own"])
        with tempfile.TemporaryDirectory() as folder:
            inner = os.path.join(folder, "base.pkl")
            with open(inner, "wb") as fh:
                fh.write(saved["base"])
            self.base.restore(inner)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan
