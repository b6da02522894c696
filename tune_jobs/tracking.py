"""Experiment tracking of a sweep: every trial logged to TensorBoard, MLflow and W&B from the Tune driver.

`callbacks(sweep, experiment)` gives what `tune.RunConfig(callbacks=...)` needs for the sweep's `tracking:`
section. One tracker run per trial, named after the trial id, through alignmixup.tracking's Trackers (what a
run logs is defined there once): parameters = the trial's hp_<name> values and identity (config_id, seed, ...)
from its first report; metrics = every numeric measurement of each report at step = epoch (hp_<name> included,
so the values in force after a population-based exploit are on record); at its end the tag best_weights = the
best-validation weights file its last checkpointed report named (tune_jobs.schema.BEST_WEIGHTS_FILE).
TensorBoard events and W&B's offline runs go into the trial's folder (Tune syncs it to <experiment>/trial_<id>/);
MLflow into the sweep's tracking URI.

Ray's own integrations are not used, because they do not fit:
- MLflowLoggerCallback logs trial.config as parameters at every start of a trial; a PBT exploit restarts the trial
  with changed values, which MLflow refuses ("Changing param values is not allowed"), crashing Tuner.fit, unless
  log_params_on_trial_end=True (then an interrupted trial has no parameters at all). Its metrics are at step =
  training_iteration, and it has no way to tag where a trial's best weights are.
- WandbLoggerCallback runs wandb in one Ray actor per trial, which holds cluster resources beside the trials and
  needs WANDB_MODE in every process for offline use; here W&B runs in the driver, one Run object per trial.
- Tune's default TBXLoggerCallback writes `ray/tune/<key>` at step = training_iteration (not the epoch, which a
  PBT exploit or a resume moves) into the same folder; two writers in one TensorBoard run folder clutter it and
  TensorBoard's reader does not go back to an older event file it has passed. With `tensorboard: true` the
  trackers' events replace it (Tune adds its own only when no TBXLoggerCallback is given).

Resume: a trial continues its tracker runs (MLflow run, W&B run id, TensorBoard folder), known from the run ids the
callback keeps in Tune's callback state, which Tuner.restore brings back; a trial restarted inside one driver (a
retry, a PBT exploit) keeps its open runs. A trial that fails before its first report gets no tracker run.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.logger import TBXLoggerCallback

from alignmixup.tracking import BEST_WEIGHTS_TAG, Status, Trackers, TrackingConfig, check_installed
from tune_jobs.config import SweepConfig
from tune_jobs.schema import BEST_WEIGHTS_FILE, HP_PREFIX, IDENTITY, TUNE_BOOKKEEPING, WORKER_EXTRAS, read_rows

EPOCH = "epoch"
NOT_MEASURED = TUNE_BOOKKEEPING | frozenset(IDENTITY) | frozenset(WORKER_EXTRAS) | {EPOCH, BEST_WEIGHTS_FILE}


def trial_params(row: dict[str, Any]) -> dict[str, Any]:
    """What a report says about its trial: its hp_<name> values and its identity (config_id, seed, ...)."""
    return {k: v for k, v in row.items() if k.startswith(HP_PREFIX) or k in IDENTITY}


def measurements(row: dict[str, Any]) -> dict[str, Any]:
    """A report without Tune's bookkeeping, the trial's identity, the worker's extras, the best weights' file and
    the epoch (the step). A PBT exploit's donor_epoch stays: it marks the exploit on the step it happened."""
    return {k: v for k, v in row.items() if k not in NOT_MEASURED}


class TrackingCallback(Callback):
    """Logs each trial of the sweep to the trackers of its `tracking:` section, from the Tune driver.

    Raises ConfigError `tracking.<key>: ...` when a tracker's package is missing (before any trial starts).
    """

    def __init__(self, config: TrackingConfig, experiment: str) -> None:
        check_installed(config, prefix="tracking.")
        self.config = config
        self.experiment = experiment
        self.name = experiment.rstrip("/").rpartition("/")[2]  # MLflow's experiment, W&B's group
        self._open: dict[str, Trackers] = {}  # trial_id -> its open tracker runs (in this driver)
        self._trials: dict[str, Trial] = {}  # trial_id -> the trial whose runs are open
        self._runs: dict[str, dict[str, str]] = {}  # trial_id -> tracker -> run id (kept across Tuner.restore)
        self._logged: dict[str, int] = {}  # trial_id -> the last epoch logged (kept likewise)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        if EPOCH not in result:
            return
        trackers = self._open.get(trial.trial_id) or self._start(trial, result)
        trackers.log(measurements(result), step=int(result[EPOCH]))
        self._logged[trial.trial_id] = int(result[EPOCH])

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, "FAILED")

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        # trials still open here were interrupted (Ctrl-C, a stop signal): a resume continues their runs
        for trial in list(self._trials.values()):
            if trial.trial_id in self._open:
                self._finish(trial, "KILLED")

    def get_state(self) -> dict[str, Any]:
        return {"runs": self._runs, "logged": self._logged}

    def set_state(self, state: dict[str, Any]) -> None:
        self._runs, self._logged = dict(state["runs"]), dict(state.get("logged", {}))

    def _start(self, trial: Trial, current: dict[str, Any] | None = None) -> Trackers:
        """Open (or continue) the trial's runs, its parameters from its first row. A continued run first gets the
        rows Tune logged that it lacks (the driver was lost between Tune's log and this callback's, or after Tune
        last saved this callback's state): those before the `current` result's epoch, or all of them."""
        rows = read_rows(trial.local_path)
        first = rows[0] if rows else current or {}
        until = int(current[EPOCH]) if current else None
        trackers = Trackers(self.config, self.name)
        resumed = self._runs.get(trial.trial_id)
        self._runs[trial.trial_id] = trackers.start(trial.trial_id, trial_params(first), trial.local_path,
                                                    resume=resumed)
        self._open[trial.trial_id], self._trials[trial.trial_id] = trackers, trial
        if resumed is not None:
            done = self._logged.get(trial.trial_id, 0)
            for row in rows:
                if EPOCH in row and done < int(row[EPOCH]) and (until is None or int(row[EPOCH]) < until):
                    trackers.log(measurements(row), step=int(row[EPOCH]))
                    self._logged[trial.trial_id] = int(row[EPOCH])
        return trackers

    def _finish(self, trial: Trial, status: Status) -> None:
        """Close the trial's runs with its status and the tag best_weights: the last weights file its rows name.
        A trial that ends after a resume without reporting again (ASHA had stopped it) is continued to close it."""
        trackers = self._open.pop(trial.trial_id, None)
        if trackers is None and trial.trial_id in self._runs:
            self._start(trial)
            trackers = self._open.pop(trial.trial_id)
        if trackers is not None:
            named = [row[BEST_WEIGHTS_FILE] for row in read_rows(trial.local_path) if row.get(BEST_WEIGHTS_FILE)]
            trackers.finish({BEST_WEIGHTS_TAG: named[-1]} if named else {}, status)


class TrackersWriteTensorBoard(TBXLoggerCallback):
    """Stands in for Tune's default TBXLoggerCallback and writes nothing: the trackers write each trial's events.

    Tune adds its own TBXLoggerCallback unless the callbacks given hold one (isinstance), so this subclass of the
    public class turns it off without TUNE_DISABLE_AUTO_CALLBACK_LOGGERS, which would also drop result.json.
    """

    def __init__(self) -> None:  # no tensorboardX writer: nothing is written
        pass

    def log_trial_start(self, trial: Trial) -> None:
        pass

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        pass

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        pass


def callbacks(sweep: SweepConfig, experiment: str) -> list[Callback]:
    """The Tune callbacks of the sweep's tracking section (none without one) for `tune.RunConfig(callbacks=...)`."""
    config = sweep.tracking
    if config is None or not config.enabled:
        return []
    found: list[Callback] = [TrackingCallback(config, experiment)]
    if config.tensorboard:
        found.append(TrackersWriteTensorBoard())
    return found
