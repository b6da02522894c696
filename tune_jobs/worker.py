"""What each Ray Train worker of a trial runs: the alignmixup Trainer under Ray Train's process group.

Every rank reports after every epoch (Ray Train needs all of them); rank 0 attaches a checkpoint at the epochs
the trial's plan lists (every `checkpoint_every` epochs, ASHA's milestones, PBT's perturbations, the last one),
uploaded by Ray in the background. Every report carries the trial's identity and hyperparameters (hp_<name>),
so that its rows alone define the trial's tables (tune_jobs.schema).

Where a worker group starts: its own Train run's latest checkpoint (Ray restarted the group after a failure),
else the segment's start checkpoint from Tune (a population-based trial: its own latest, or after an exploit
its donor's), else epoch 0. The best-validation weights live outside the checkpoints, one safetensors file
per change in the trial's storage (written before the checkpoint that refers to them), and come back on resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch.distributed as dist
from filelock import FileLock

from alignmixup.checkpoint import CheckpointError
from alignmixup.config import TrainConfig
from alignmixup.data import prepare_data
from alignmixup.trainer import EpochMetrics, Trainer
from alignmixup.weights import read_weights, weights_bytes
from tune_jobs import storage
from tune_jobs.schema import BEST_WEIGHTS_FILE, DONOR_COLUMNS, REPORTED_AT

CHECKPOINT_FILE = "checkpoint.pt"
META_FILE = "meta.json"  # beside checkpoint.pt: the trial that wrote it, its epoch, where its best weights are
BEST_SUFFIX = ".safetensors"
# Referenced best-weights files kept when pruning: Ray keeps 2 registered checkpoints, and with asynchronous upload
# (one upload thread) the newest 2 written may still be on their way.
KEEP_REFERENCED = 4
# Ray Train's two INFO lines per report and rank, each with the whole metrics dict: they bury Tune's table
PER_REPORT_LINES = ("Reporting training result ", "Checkpoint successfully created at: ")


@dataclass(frozen=True)
class CheckpointPlan:
    """When and where a trial checkpoints (built by the driver, handed to every worker in train_loop_config).

    epochs: the epochs that get a checkpoint. best_dir: the trial's folder of best-validation weights. run: the
    Train run's name (unique per segment under PBT). keep_all_best: never delete best-weights files (PBT: any
    checkpoint Tune keeps may be a donor's, and refers to one).
    """

    trial_id: str
    run: str
    epochs: tuple[int, ...]
    best_dir: str
    keep_all_best: bool


class _DropPerReportLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(PER_REPORT_LINES)


def quiet_per_report_logs() -> None:
    """Drop Ray Train's per-report INFO lines from the console, keeping its other messages (retries are INFO too).

    Train's LoggingConfig cannot do it without also hiding its retry notices, and one of the two loggers is named
    after its source file rather than under `ray.train`; so the records are filtered on every Ray Train logger,
    found by name, without importing Ray's private modules.
    """
    drop = _DropPerReportLines()
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and (name.startswith("ray.train") or "/ray/train/" in name):
            logger.addFilter(drop)


def prepare_once_per_node(cfg: TrainConfig) -> None:
    """prepare_data under a node-wide lock: the first worker of a node does the work, the rest find it done."""
    key = hashlib.sha1(f"{cfg.dataset}:{cfg.data_dir}".encode()).hexdigest()[:16]
    with FileLock(Path(tempfile.gettempdir()) / f"alignmixup-prepare-{key}.lock"):
        prepare_data(cfg)


def epoch_report(m: EpochMetrics, identity: dict[str, Any]) -> dict[str, Any]:
    """The epoch's metrics, the trial's identity, every rank's sample count and process id, and the time."""
    mine = (m.train_samples, os.getpid())
    ranks = [mine]
    if dist.is_initialized():
        ranks = [mine] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
    return {
        **m.as_dict(),
        **identity,
        "train_samples_by_rank": [samples for samples, _ in ranks],
        "pid_by_rank": [pid for _, pid in ranks],
        REPORTED_AT: time.time(),
    }


def best_epoch(trainer: Trainer) -> int | None:
    """The epoch whose weights are the trainer's best (the last that improved on the selecting split)."""
    return max((m.epoch for m in trainer.history if m.improved), default=None)


def read_meta(checkpoint: ray.train.Checkpoint) -> dict[str, Any]:
    """The meta.json of a checkpoint this worker wrote, read without downloading the checkpoint."""
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{META_FILE}") as stream:
        return json.loads(stream.read())


class BestWeights:
    """A trial's best-validation weights in its storage, one safetensors file per change, never inside a checkpoint.

    `record` writes the trainer's best weights when they changed since the last checkpoint (before the checkpoint
    that will refer to them) and returns their location. A crash between the two writes leaves a file no checkpoint
    refers to; the resumed run starts from a checkpoint that refers to an older file, kept for it (pruning keeps
    the files of the last KEEP_REFERENCED checkpoints) and later deleted.
    """

    def __init__(self, plan: CheckpointPlan, trainer: Trainer, current: str | None) -> None:
        self.plan, self.trainer = plan, trainer
        self.written_epoch = best_epoch(trainer) if current is not None else None
        self.location = current
        self.referenced: deque[str] = deque([current] if current else [], maxlen=KEEP_REFERENCED)

    def record(self) -> str | None:
        """The location of the best weights as of now, written first if they changed."""
        epoch = best_epoch(self.trainer)
        if epoch is not None and epoch != self.written_epoch:
            m = next(h for h in reversed(self.trainer.history) if h.epoch == epoch)
            location = storage.join(self.plan.best_dir, f"{self.plan.run}-e{epoch:06d}{BEST_SUFFIX}")
            data = weights_bytes(self.trainer.best_state, self.trainer.cfg, epoch=epoch, trial_id=self.plan.trial_id,
                                 val_acc=m.val_acc, test_acc=m.test_acc)
            storage.write(location, lambda fh: fh.write(data))
            self.written_epoch, self.location = epoch, location
        if self.location is not None:
            self.referenced.append(self.location)
            self._prune()
        return self.location

    def _prune(self) -> None:
        """Delete this trial's best-weights files that no recent checkpoint refers to (not under PBT)."""
        if self.plan.keep_all_best:
            return
        keep = {location.rsplit("/", 1)[-1] for location in self.referenced}
        fs, _ = storage.resolve(self.plan.best_dir)
        for info in storage.children(self.plan.best_dir):
            if info.base_name.endswith(BEST_SUFFIX) and info.base_name not in keep:
                fs.delete_file(info.path)


def load_best(trainer: Trainer, location: str) -> None:
    """Give the trainer back the best weights a checkpoint refers to (every rank: all of them test them at the end)."""
    try:
        state, _ = read_weights(storage.read_bytes(location))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"best weights {location}: referenced by the checkpoint but unreadable ({exc})") from None
    trainer.best_state = state


def restore(trainer: Trainer, checkpoint: ray.train.Checkpoint) -> dict[str, Any]:
    """Load a checkpoint and the best weights it refers to into the trainer; returns its meta.json."""
    meta = read_meta(checkpoint)
    with checkpoint.as_directory() as folder:
        trainer.load_checkpoint(Path(folder) / CHECKPOINT_FILE)
    if meta[BEST_WEIGHTS_FILE] is not None:
        load_best(trainer, meta[BEST_WEIGHTS_FILE])
    return meta


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Build the Trainer from config["train"], resume where the plan says, report every epoch."""
    quiet_per_report_logs()
    cfg = TrainConfig.model_validate(config["train"])
    plan = CheckpointPlan(**config["plan"])
    prepare_once_per_node(cfg)
    trainer = Trainer(cfg, device=ray.train.torch.get_device())
    own = ray.train.get_checkpoint()  # this Train run's latest: Ray restarted the worker group
    start = own or config.get("start_checkpoint")
    meta = restore(trainer, start) if start is not None else {BEST_WEIGHTS_FILE: None}
    best = BestWeights(plan, trainer, meta[BEST_WEIGHTS_FILE])
    # The first epoch after an exploit says whose checkpoint it started from (PBT lineage; null on other rows).
    lineage: dict[str, Any] | None = None
    if "lineage" in config:
        lineage = dict.fromkeys(DONOR_COLUMNS)
        if own is None and config["lineage"] is not None:
            lineage = dict(config["lineage"])

    def report(m: EpochMetrics) -> None:
        nonlocal lineage
        metrics = {**epoch_report(m, config["identity"]), BEST_WEIGHTS_FILE: None}
        if lineage is not None:
            metrics.update(lineage)
            lineage = dict.fromkeys(DONOR_COLUMNS)
        if m.epoch not in plan.epochs or trainer.rank != 0:
            ray.train.report(metrics)
            return
        metrics[BEST_WEIGHTS_FILE] = best.record()  # the best weights first, then the checkpoint that refers to them
        folder = tempfile.mkdtemp(prefix="alignmixup-checkpoint-")  # outlives report: Ray uploads it, then deletes it
        trainer.save_checkpoint(Path(folder) / CHECKPOINT_FILE, with_best=False)
        meta = {"trial_id": plan.trial_id, "run": plan.run, "epoch": m.epoch,
                BEST_WEIGHTS_FILE: metrics[BEST_WEIGHTS_FILE]}
        Path(folder, META_FILE).write_text(json.dumps(meta))
        # Ray Train's asynchronous upload (public alpha in 2.60): report returns at once and a background thread
        # uploads the folder, so the next epoch trains meanwhile; https://docs.ray.io/en/latest/train/user-guides/
        # checkpoints.html#asynchronous-checkpoint-uploading
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                         delete_local_checkpoint_after_upload=True)

    trainer.fit(on_epoch=report)
