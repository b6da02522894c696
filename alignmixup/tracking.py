"""Experiment tracking of a run: TensorBoard event files, an MLflow tracking store, Weights & Biases (offline too).

One definition of what a run logs, used by `alignmixup-train --tracking` and by the sweep's Tune callback
(tune_jobs.tracking): its settings as parameters once, when it starts; every epoch's numeric metrics at
step = epoch; and when it ends, where its best weights are (tag `best_weights`). The trackers' packages are
optional (`pip install 'alignmixup[tracking]'`) and imported only when a tracker is asked for; a missing one is a
one-line ConfigError naming the key.

Every tracker is driven through its public client API with one run object per run, so several runs can be open
in one process (a sweep's driver tracks all its trials at once): MLflow through `MlflowClient` (never the fluent
API, whose single active run is global), W&B through separate `wandb.init(reinit="create_new")` Run objects.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import numbers
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator

from alignmixup.config import Strict, error_line
from alignmixup.console import ConfigError
from alignmixup.files import atomic_write

EXTRA = "alignmixup[tracking]"
BEST_WEIGHTS_TAG = "best_weights"
RUNS_FILE = "tracking.json"  # <run folder>/tracking.json: the settings and run ids, so that a resume continues them
TRACKERS = ("tensorboard", "mlflow", "wandb")
# tracker -> (the module it imports, the package that provides it)
PACKAGES = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny"),
            "wandb": ("wandb", "wandb")}
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
Status = Literal["FINISHED", "FAILED", "KILLED"]  # how a run ended, in MLflow's words


def _wandb_shorthand(value: Any) -> Any:
    """`wandb: true` means the defaults, `wandb: false` none, `wandb: <text>` a project name."""
    if value is True:
        return {}
    if value is False:
        return None
    return {"project": value} if isinstance(value, str) else value


class WandbSettings(Strict):
    """Weights & Biases: offline (no network, no account: `wandb sync` uploads later) or online."""

    project: str = Field("alignmixup", min_length=1)
    mode: Literal["offline", "online"] = "offline"
    dir: Path | None = Field(None, description="W&B writes <dir>/wandb/offline-run-*; None: the run's own folder")


class TrackingConfig(Strict):
    """Which trackers a run (or each trial of a sweep) logs to."""

    tensorboard: bool = Field(False, description="TensorBoard event files in the run's folder (a trial's folder)")
    mlflow: str | None = Field(None, description="an MLflow tracking URI: file:/abs/mlruns, "
                               "sqlite:///abs/mlflow.db, http://host:5000")
    wandb: Annotated[WandbSettings | None, BeforeValidator(_wandb_shorthand)] = None
    experiment: str | None = Field(None, min_length=1, description="MLflow's experiment and W&B's group; None: the "
                                   "sweep's name, or alignmixup-train for single runs")

    @field_validator("mlflow", mode="before")
    @classmethod
    def _uri(cls, value: Any) -> Any:
        if value is False:  # `mlflow: false`: off
            return None
        if value is True or (isinstance(value, str) and not URI.match(value)):
            raise ValueError("expected a tracking URI such as file:/abs/mlruns, sqlite:///abs/mlflow.db or "
                             "http://host:5000")
        return value

    @property
    def enabled(self) -> list[str]:
        """The trackers asked for."""
        return [name for name in TRACKERS if getattr(self, name) not in (None, False)]


def tracking_flag(text: str) -> TrackingConfig:
    """The `--tracking` flag: comma-separated trackers, e.g. `tensorboard,mlflow=file:/abs/mlruns,wandb`.

    `key` turns a tracker on with its defaults, `key=value` sets a setting, dotted keys reach W&B's
    (`wandb.mode=online`, `wandb.dir=/x`); `wandb=<project>` names the project. Raises ArgumentTypeError (argparse
    reports it as `argument --tracking: ...`).
    """
    values: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        *parents, leaf = key.strip().split(".")
        target = values
        for part in parents:  # a dotted key sets one of W&B's settings
            current = _wandb_shorthand(target.get(part, True))
            target[part] = current if isinstance(current, dict) else {}
            target = target[part]
        new = value.strip() if sep else True
        earlier = target.get(leaf)
        target[leaf] = {**earlier, **(_wandb_shorthand(new) or {})} if isinstance(earlier, dict) else new
    if not values:
        raise argparse.ArgumentTypeError("expected trackers such as tensorboard,mlflow=file:/abs/mlruns,wandb")
    try:
        return TrackingConfig.model_validate(values)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(error_line(exc, model=TrackingConfig)) from None


def check_installed(config: TrackingConfig, prefix: str = "") -> None:
    """Import each enabled tracker's package; raise a one-line ConfigError `<prefix><key>: ...` for a missing one."""
    for name in config.enabled:
        module, package = PACKAGES[name]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"{prefix}{name}: needs the {package} package, which is not installed ({exc}); "
                              f"pip install '{EXTRA}'") from None


def flat_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested settings as `a.b` keys with scalar values (lists as JSON text, None and paths as text)."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{prefix}{key}."))
        elif isinstance(value, bool | int | float | str):
            out[prefix + key] = value
        elif isinstance(value, list | tuple):
            out[prefix + key] = json.dumps(list(value))
        else:
            out[prefix + key] = str(value)
    return out


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among `values` (booleans, text, lists, None and NaN left out)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)}


# ----------------------------------------------------------------------------------- one tracker each


class _TensorBoard:
    """Event files in the run's folder: scalars at step = epoch, the parameters in TensorBoard's HParams plugin
    (written with the first metrics, whose names it lists), the tags as text."""

    name = "tensorboard"

    def start(self, name: str, params: dict[str, Any], folder: Path, run_id: str | None) -> str:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))
        self.params = None if run_id else params  # a continued run has its parameters already
        self.hparams_written = False
        return str(folder)

    def log(self, metrics: dict[str, float], step: int) -> None:
        from torch.utils.tensorboard.summary import hparams

        if self.params is not None:
            experiment, start, _ = hparams(self.params, dict.fromkeys(metrics, 0.0))
            self.writer.file_writer.add_summary(experiment)
            self.writer.file_writer.add_summary(start)
            self.params, self.hparams_written = None, True
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # every epoch: a run that dies keeps what it logged

    def finish(self, tags: dict[str, str], status: Status) -> None:
        from torch.utils.tensorboard.summary import hparams

        for key, value in tags.items():
            self.writer.add_text(key, value)
        if self.hparams_written and status == "FINISHED":  # its session-end record can only say "success"
            self.writer.file_writer.add_summary(hparams({}, {})[2])
        self.writer.close()


class _MLflow:
    """A run in an MLflow tracking store, through MlflowClient: parameters once, metrics at step = epoch, tags."""

    name = "mlflow"

    def __init__(self, uri: str, experiment: str) -> None:
        if uri.startswith("file:"):
            # MLflow 3.18 refuses its file store unless this is set (it reads it at every call, so it is set for the
            # whole of the process that runs the tracker, and for nothing else: a sqlite: URI needs no such flag)
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.experiment = experiment

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except MlflowException:  # another process created it in the meantime
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def start(self, name: str, params: dict[str, Any], folder: Path, run_id: str | None) -> str:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        if run_id is not None:
            try:
                self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
                return run_id
            except MlflowException:  # not in this store (its URI changed): a new run
                pass
        run = self.client.create_run(self._experiment_id(), run_name=name)
        self.run_id = run.info.run_id
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters a batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        return self.run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, tags: dict[str, str], status: Status) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)
        self.client.set_terminated(self.run_id, status=status)


class _Wandb:
    """A W&B run object of its own (never the global `wandb.run`): parameters as its config, metrics with `epoch`
    as their x axis, tags in its summary. Offline, it writes <dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb."""

    name = "wandb"

    def __init__(self, settings: WandbSettings, experiment: str) -> None:
        self.settings, self.experiment = settings, experiment

    def start(self, name: str, params: dict[str, Any], folder: Path, run_id: str | None) -> str:
        import wandb

        where = Path(self.settings.dir or folder)
        where.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.settings.project, group=self.experiment, name=name, dir=str(where), mode=self.settings.mode,
            id=run_id, resume="allow" if run_id else None, config=None if run_id else params, reinit="create_new",
            # console capture is per process: with several runs open (a sweep's trials) each would record all of it;
            # the latest-run symlink would become a second copy of the run when Tune syncs a trial's folder
            settings=wandb.Settings(console="off", silent=True, symlink=False, disable_job_creation=True),
        )
        # metrics are plotted against the epoch they belong to, which may repeat or go back (a resumed epoch, a
        # population-based exploit), where W&B's own step must only grow
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")
        return self.run.id

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({**metrics, "epoch": step})

    def finish(self, tags: dict[str, str], status: Status) -> None:
        for key, value in tags.items():
            self.run.summary[key] = value
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


# ----------------------------------------------------------------------------------- the fan-out


class Trackers:
    """One run, logged to every tracker its TrackingConfig enables: start, log every epoch, finish.

    `experiment` groups runs (MLflow's experiment, W&B's group) unless the config names one itself. Raises
    ConfigError (`<prefix><key>: ...`) when an enabled tracker's package is missing.
    """

    def __init__(self, config: TrackingConfig, experiment: str, prefix: str = "tracking.") -> None:
        check_installed(config, prefix)
        self.config = config
        group = config.experiment or experiment
        self._trackers: list[Any] = []
        if config.tensorboard:
            self._trackers.append(_TensorBoard())
        if config.mlflow is not None:
            self._trackers.append(_MLflow(config.mlflow, group))
        if config.wandb is not None:
            self._trackers.append(_Wandb(config.wandb, group))
        self.ids: dict[str, str] = {}
        self.open = False

    def start(self, name: str, params: Mapping[str, Any], folder: Path | str,
              resume: Mapping[str, str] | None = None) -> dict[str, str]:
        """Open the run `name` in every tracker with its parameters (flattened); files go into `folder`.

        With the run ids of an earlier start (`resume`, as returned then), those runs are continued (their
        parameters kept) instead of new ones opened. Writes <folder>/tracking.json and returns the run ids.
        """
        if not self._trackers:
            return {}
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        values = flat_params(params)
        resume = resume or {}
        self.ids = {t.name: t.start(name, values, folder, resume.get(t.name)) for t in self._trackers}
        self.open = True
        record = {"tracking": self.config.model_dump(mode="json"), "runs": self.ids}
        atomic_write(folder / RUNS_FILE, lambda fh: fh.write(json.dumps(record, indent=1).encode()))
        return self.ids

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log the finite numbers among `metrics` at `step` (the epoch); the rest is left out."""
        values = numeric(metrics)
        for tracker in self._trackers:
            tracker.log(values, step)

    def finish(self, tags: Mapping[str, str] | None = None, status: Status = "FINISHED") -> None:
        """Set the run's tags (e.g. best_weights) and close it with `status`."""
        if not self.open:
            return
        self.open = False
        for tracker in self._trackers:
            tracker.finish(dict(tags or {}), status)

    @contextmanager
    def running(self, name: str, params: Mapping[str, Any], folder: Path | str,
                resume: Mapping[str, str] | None = None) -> Iterator[Trackers]:
        """start(), and finish() on the way out unless done already: KILLED on Ctrl-C, FAILED on an error."""
        self.start(name, params, folder, resume)
        try:
            yield self
        except KeyboardInterrupt:
            self.finish(status="KILLED")
            raise
        except BaseException:
            self.finish(status="FAILED")
            raise
        self.finish()


def stored(folder: Path | str) -> tuple[TrackingConfig, dict[str, str]] | None:
    """The tracking settings and run ids a run in `folder` was started with (its tracking.json); None if none."""
    path = Path(folder) / RUNS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return TrackingConfig.model_validate(record["tracking"]), dict(record["runs"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a tracking record this version can read ({exc})") from None


def command_line_trackers(flag: TrackingConfig | None, folder: Path, resuming: bool,
                          experiment: str) -> tuple[Trackers, dict[str, str] | None]:
    """A command-line run's trackers and the run ids to continue: the flag's trackers, or, resuming without the
    flag, those the run started with. Errors name the flag."""
    earlier = stored(folder) if resuming else None
    config = flag or (earlier[0] if earlier else TrackingConfig())
    return Trackers(config, experiment, prefix="argument --tracking: "), earlier[1] if earlier else None
