"""ASHA whose rungs and decisions live in the experiment directory, so that a resumed sweep decides as if never
interrupted, and the analysis shows what ASHA actually did.

Ray Tune does not persist its scheduler: the controller leaves it out of the experiment state and nothing calls
`ASHAScheduler.save/restore`, so after `Tuner.restore` ASHA starts with empty rungs and lets nearly every trial
go on. `RecordedASHA` makes Ray's decisions (`AsyncHyperBandScheduler` with one bracket: the same milestones,
the same cut-off, `numpy.nanpercentile` of a rung's recorded values at 1 - 1/reduction_factor, the same
order of checks; tests/test_tune_scheduler.py compares it with Ray's on random result streams), and after each
one writes the rungs, the trials it stopped and every decision (scheduler_state.json and decisions.parquet)
atomically; a restored scheduler reads them back before its first decision.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tune_jobs import storage
from tune_jobs.schema import DECISION_COLUMNS, DECISIONS_TABLE, SCHEDULER_STATE, TUNE_BOOKKEEPING, milestones

STATE_VERSION = 2


class RecordedASHA(FIFOScheduler):
    """Asynchronous successive halving on `time_attr` (the reported epoch), persisted in `experiment`."""

    def __init__(self, experiment: str, max_t: int, grace_period: int, reduction_factor: float,
                 time_attr: str = "epoch") -> None:
        super().__init__()
        self.experiment, self.time_attr, self.max_t = experiment, time_attr, max_t
        self.milestones = milestones(grace_period, max_t, reduction_factor)
        self.reduction_factor = reduction_factor
        self.rungs: dict[float, dict[str, float]] = {m: {} for m in self.milestones}  # signed values: higher wins
        self.stop_rows: dict[str, dict[str, Any]] = {}  # trial -> the report it was stopped at (what the worker sent)
        self.decisions: list[dict[str, Any]] = []
        self._mode: str | None = None
        self._loaded = False

    # ------------------------------------------------------------------ Tune's interface

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return True

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._load()

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        return self.decide(trial.trial_id, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        """A finished trial's last result joins the highest rung it reached (as Ray's bracket records it)."""
        if self.time_attr in result and self._metric in result and result[self._metric] is not None:
            rung = self._rung_to_record(trial.trial_id, result[self.time_attr])
            if rung is not None:
                self.rungs[rung][trial.trial_id] = self._signed(result[self._metric])
                self._save()

    def debug_string(self) -> str:
        cutoffs = ", ".join(f"epoch {m:g}: {self.cutoff(m)}" for m in reversed(self.milestones))
        return f"RecordedASHA: {len(self.stop_rows)} stopped; cut-offs {cutoffs}"

    # ------------------------------------------------------------------ decisions

    def decide(self, trial_id: str, result: Mapping[str, Any]) -> str:
        """CONTINUE or STOP for a reported result, recorded (and persisted) when it is a decision at a rung."""
        self._load()
        if trial_id in self.stop_rows:  # stopped before an interruption that Tune's experiment state missed
            return TrialScheduler.STOP
        if self.time_attr not in result or result.get(self._metric) is None:
            return TrialScheduler.CONTINUE
        t, value = result[self.time_attr], result[self._metric]
        if t >= self.max_t:
            return self._record(trial_id, result, self.max_t, None, TrialScheduler.STOP)
        rung = self._rung_to_record(trial_id, t)
        if rung is None:
            return TrialScheduler.CONTINUE
        cutoff = self.cutoff(rung)
        action = TrialScheduler.STOP if cutoff is not None and self._signed(value) < cutoff else TrialScheduler.CONTINUE
        self.rungs[rung][trial_id] = self._signed(value)
        return self._record(trial_id, result, rung, cutoff, action)

    def cutoff(self, milestone: float) -> float | None:
        """The signed value a trial reaching `milestone` must reach: the rung's top-1/reduction_factor quantile."""
        recorded = self.rungs[milestone]
        if not recorded:
            return None
        return float(np.nanpercentile(list(recorded.values()), (1 - 1 / self.reduction_factor) * 100))

    def _rung_to_record(self, trial_id: str, t: float) -> float | None:
        """The highest milestone <= t at which the trial is not yet recorded (Ray's bracket walks them so)."""
        return next((m for m in self.milestones if t >= m and trial_id not in self.rungs[m]), None)

    def _signed(self, value: float) -> float:
        return value if self._mode == "max" else -value

    def _record(self, trial_id: str, result: Mapping[str, Any], milestone: float, cutoff: float | None,
                action: str) -> str:
        t, value = result[self.time_attr], result[self._metric]
        if action == TrialScheduler.STOP:
            # kept with the decision: the driver may be lost before Tune logs this row (tune_jobs.driver re-reports it)
            self.stop_rows[trial_id] = {k: v for k, v in result.items() if k not in TUNE_BOOKKEEPING | {"time_total_s"}}
        shown = None if cutoff is None else self._signed(cutoff)  # in the metric's own units
        self.decisions.append({
            "trial_id": trial_id, "epoch": int(t), "milestone": float(milestone), "metric": self._metric,
            "value": float(value), "cutoff": math.nan if shown is None else shown, "decision": action,
            "wall_time": time.time(),
        })
        self._save()
        return action

    # ------------------------------------------------------------------ persistence

    def state(self) -> dict[str, Any]:
        """Everything the decisions depend on, as JSON-ready data."""
        return {
            "version": STATE_VERSION, "metric": self._metric, "mode": self._mode,
            "rungs": [[m, self.rungs[m]] for m in self.milestones], "stopped": sorted(self.stop_rows),
            "stop_rows": self.stop_rows,
            "decisions": self.decisions,
        }

    def _save(self) -> None:
        storage.write_text(storage.join(self.experiment, SCHEDULER_STATE), json.dumps(self.state()))
        frame = decisions_frame(self.decisions)
        storage.write(storage.join(self.experiment, DECISIONS_TABLE), lambda fh: frame.to_parquet(fh, index=False))

    def _load(self) -> None:
        """Read the state an interrupted run of this experiment left (once, before the first decision)."""
        if self._loaded:
            return
        self._loaded = True
        location = storage.join(self.experiment, SCHEDULER_STATE)
        if not storage.is_file(location):
            return
        saved = storage.read_json(location)
        if saved.get("version") != STATE_VERSION or [m for m, _ in saved["rungs"]] != self.milestones:
            raise ValueError(f"{location}: written by another scheduler configuration; cannot resume from it")
        self.rungs = {m: dict(recorded) for m, recorded in saved["rungs"]}
        self.stop_rows = dict(saved["stop_rows"])
        self.decisions = list(saved["decisions"])


def stop_rows(experiment: str) -> dict[str, dict[str, Any]]:
    """trial_id -> the report the experiment's ASHA stopped it at, for every trial it has stopped so far."""
    location = storage.join(experiment, SCHEDULER_STATE)
    return storage.read_json(location)["stop_rows"] if storage.is_file(location) else {}


def decisions_frame(decisions: list[dict[str, Any]]) -> pd.DataFrame:
    """The decisions table: one row per scheduler decision, in the order they were made."""
    return pd.DataFrame(decisions, columns=list(DECISION_COLUMNS)).astype(
        {"epoch": "int64", "milestone": float, "value": float, "cutoff": float}
    )
