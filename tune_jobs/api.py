"""The Python API of the sweeps: what `alignmixup-tune` does, callable from a script or a notebook.

    from tune_jobs import api
    sweep = api.load_sweep("quickstart", overrides={"num_samples": 2, "scheduler.max_t": 2})
    outcome = api.run(sweep, storage_location="runs/tune", name="from-python")
    print(outcome.trials[["trial_id", "hp_alpha", "best_val_acc"]])
    outcome = api.resume(outcome.experiment)          # after an interruption

Every function validates before Ray is touched and raises `alignmixup.console.ConfigError` (one line naming the
key) on bad input. `analysis.load(outcome.experiment)` reads the tables back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignmixup.console import ConfigError
from alignmixup.tracking import check_installed
from tune_jobs import config, preflight, presets, storage
from tune_jobs.config import SweepConfig
from tune_jobs.schema import SWEEP_FILE
from tune_jobs.tables import read_sweep

if TYPE_CHECKING:
    from tune_jobs.driver import Outcome

STORAGE_ENV = "ALIGNMIXUP_STORAGE"  # a cluster's default storage (its nodes set it): used when the sweep gives none


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """raw[a][b]... = value for the key path "a.b...", creating mappings on the way."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"{dotted!r}: not a key path such as train.width")
    target = raw
    for depth, key in enumerate(keys[:-1]):
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{'.'.join(keys[:depth + 1])}: not a mapping, so it has no key {keys[depth + 1]!r}")
    target[keys[-1]] = value


def load_sweep(source: str | Path | Mapping[str, Any] | SweepConfig,
               overrides: Mapping[str, Any] | None = None) -> SweepConfig:
    """A validated sweep from a YAML path, a preset name, a mapping or a SweepConfig, with `overrides` applied
    (key paths such as "train.width" or "search.alpha", values as the YAML file would hold them)."""
    if isinstance(source, SweepConfig):
        raw = source.model_dump(mode="json", exclude_unset=True)  # unset keys stay unset: storage's default applies
    elif isinstance(source, Mapping):
        raw = dict(source)
    else:
        raw = presets.load_raw(str(source))[0]
    for key, value in (overrides or {}).items():
        set_key(raw, key, value)
    return config.validate(raw)


def prepare(sweep: SweepConfig, *, storage_location: str | None = None, name: str | None = None,
            default_name: str = "sweep") -> tuple[SweepConfig, str]:
    """The sweep as it will run (storage made absolute, a name) and its experiment location; checks the storage.

    Storage: the argument, else the sweep's own when it set one, else $ALIGNMIXUP_STORAGE, else runs/tune.
    """
    updates: dict[str, Any] = {}
    if storage_location is not None:
        updates["storage"] = storage_location
    elif "storage" not in sweep.model_fields_set and os.environ.get(STORAGE_ENV):
        updates["storage"] = os.environ[STORAGE_ENV]
    updates["name"] = name or sweep.name or f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep = config.validate({**sweep.model_dump(mode="json", exclude_unset=True), **updates})
    preflight.check_storage(sweep, probe_uri=True)  # a URI too: reachable, credentials, bucket (one PUT and DELETE)
    check_trackers(sweep)
    sweep = sweep.model_copy(update={"storage": storage.absolute(sweep.storage)})  # resume finds it from anywhere
    experiment = config.experiment_path(sweep.storage, sweep.name or "")
    if storage.exists(experiment):
        raise ConfigError(f"name: {experiment} exists; resume it with `alignmixup-tune resume {experiment}`")
    return sweep, experiment


def run(sweep: SweepConfig | str | Path | Mapping[str, Any], *, storage_location: str | None = None,
        name: str | None = None, address: str | None = None) -> Outcome:
    """Run a sweep to the end (or until interrupted) on the cluster at `address`, else a local one."""
    stem = Path(str(sweep)).stem if isinstance(sweep, str | Path) else "sweep"
    prepared, experiment = prepare(load_sweep(sweep), storage_location=storage_location, name=name,
                                   default_name=stem)
    preflight.check_local(prepared)  # modules, GPU packing (the cluster's checks follow its ray.init)
    from tune_jobs import driver  # Ray is imported only once the configuration is known to be good

    return driver.run(prepared, experiment, address)


def experiment_location(experiment: str | Path) -> str:
    """The experiment as the path or URI Tune restores from; ConfigError if it is not one `run` made."""
    location = storage.absolute(experiment)
    if not storage.is_file(storage.join(location, SWEEP_FILE)):
        raise ConfigError(f"experiment: {experiment} holds no {SWEEP_FILE} (not a directory `run` made)")
    check_trackers(read_sweep(location))
    return location


def check_trackers(sweep: SweepConfig) -> None:
    """The packages of the trackers the sweep asks for are installed (a one-line ConfigError naming the key)."""
    if sweep.tracking is not None:
        check_installed(sweep.tracking, "tracking.")


def resume(experiment: str | Path, *, address: str | None = None) -> Outcome:
    """Finish an interrupted sweep: unfinished and errored trials go on from their checkpoints."""
    location = experiment_location(experiment)
    from tune_jobs import driver

    return driver.resume(location, address)
