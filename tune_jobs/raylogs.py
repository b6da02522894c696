"""Ray Tune's own logs kept whole: a trial's result.json and progress.csv across its restarts in one driver, and
PBT's exploit logs (pbt_global.txt, pbt_policy_<trial>.txt) across a resume. Workarounds of Ray 2.60.

The driver writes these files in a local staging folder and uploads it to the experiment every 10 s or more.
- Ray's loggers copy a trial's file from the experiment over the staging copy at every start of the trial
  (`_restore_from_remote`, added by ray-project/ray#38598 for restores). A PBT exploit or pause restarts the trial
  in the same driver, whose copy holds the rows the last upload has not: they were lost, all of them when that
  upload had caught the file still empty (a test sweep's tables missed a trial's first epochs). Here the copy is
  made only when the driver has none: after a resume, in a new staging folder.
- Tuner.restore downloads only the experiment's top-level .json and .pkl files (sync_down_experiment_state), so
  PBT's .txt logs start empty in the new staging folder and its first upload replaced the experiment's: the
  exploits made before the interrupt were gone from pbt_global.txt. `carry_pbt_logs` brings them back first.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.experiment import Trial
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from tune_jobs import storage

PBT_LOG_PREFIX = "pbt_"  # pbt_global.txt and pbt_policy_<trial_id>.txt, written by Ray's PopulationBasedTraining
PBT_GLOBAL_LOG = "pbt_global.txt"  # one line per exploit, appended at every one


class _RestoreWhenMissing:
    """A Ray result logger that copies a trial's file from the experiment only when the driver has no copy."""

    def _restore_from_remote(self, file_name: str, trial: Trial) -> None:
        if not Path(trial.local_path, file_name).exists():
            super()._restore_from_remote(file_name, trial)  # type: ignore[misc]


class JsonLog(_RestoreWhenMissing, JsonLoggerCallback):
    """Tune's result.json logger (it stands in for the default one), keeping the driver's rows at a restart."""


class CsvLog(_RestoreWhenMissing, CSVLoggerCallback):
    """Tune's progress.csv logger (it stands in for the default one), keeping the driver's rows at a restart."""


def carry_pbt_logs(experiment: str, staging: str) -> list[str]:
    """Copy PBT's logs from the experiment into the driver's staging folder where it has none yet; returns the
    names copied. Called before PBT logs an exploit, so a resumed sweep appends to the logs of the first run; once
    the driver has pbt_global.txt (carried, or written by an exploit), it lists nothing."""
    if Path(staging, PBT_GLOBAL_LOG).exists():
        return []
    copied = []
    for info in storage.children(experiment):
        name, local = info.base_name, Path(staging, info.base_name)
        if name.startswith(PBT_LOG_PREFIX) and name.endswith(".txt") and info.is_file and not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(storage.read_bytes(storage.join(experiment, name)))
            copied.append(name)
    return copied
