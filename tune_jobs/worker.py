"""What each Ray Train worker of a trial runs: the alignmixup Trainer under Ray Train's process group.

Every rank reports after every epoch (Ray Train needs all of them); rank 0 attaches the checkpoint.
A restarted worker group resumes from the run's latest checkpoint. Every report carries the trial's identity
and hyperparameters (hp_<name>), so that its rows alone define the trial's tables (tune_jobs.schema).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch.distributed as dist
from filelock import FileLock

from alignmixup.config import TrainConfig
from alignmixup.data import prepare_data
from alignmixup.trainer import EpochMetrics, Trainer

CHECKPOINT_FILE = "checkpoint.pt"
# Ray Train's two INFO lines per report and rank, each with the whole metrics dict: they bury Tune's table
PER_REPORT_LINES = ("Reporting training result ", "Checkpoint successfully created at: ")


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
        "reported_at": time.time(),
    }


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Build the Trainer from config["train"], resume from Ray's checkpoint, report every epoch."""
    quiet_per_report_logs()
    cfg = TrainConfig.model_validate(config["train"])
    prepare_once_per_node(cfg)
    trainer = Trainer(cfg, device=ray.train.torch.get_device())
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load_checkpoint(Path(folder) / CHECKPOINT_FILE)

    def report(m: EpochMetrics) -> None:
        metrics = epoch_report(m, config["identity"])
        if trainer.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            trainer.save_checkpoint(Path(folder) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    trainer.fit(on_epoch=report)
