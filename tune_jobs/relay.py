"""Hands a Train run's reports from its controller to its Tune trial function, checkpoints included.

Ray's TuneReportCallback forwards the metrics only, and PBT needs every perturbation's report to carry a Tune
checkpoint. Kept apart from tune_jobs.driver so that the relay actor and the Train controller, which unpickle
these classes, import Ray alone (not torch and the trainer).
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
import ray.train


@ray.remote(num_cpus=0)
class Relay:
    """Hands the Train controller's reports to the Tune trial function, in order; for a report with a checkpoint,
    the controller waits until the trial function says it has its own copy."""

    def __init__(self) -> None:
        self.items: asyncio.Queue = asyncio.Queue()
        self.acks: asyncio.Queue = asyncio.Queue()

    async def put(self, item: Any, wait: bool) -> None:
        await self.items.put(item)
        if wait:
            await self.acks.get()

    async def get(self) -> Any:
        return await self.items.get()

    async def ack(self) -> None:
        await self.acks.put(None)


class ReportToTune(ray.train.UserCallback):
    """In the Train controller: each new epoch's report (rank 0's metrics) goes to the trial function; under PBT
    with its checkpoint, and the controller waits until the function has copied it (Train deletes it two
    checkpoints later, and Tune may be slower than that to take the report). An epoch at or below `floor` was
    reported before a restart from an earlier checkpoint: dropped."""

    def __init__(self, relay: Any, floor: int, checkpoints: bool) -> None:
        self.relay, self.floor, self.checkpoints = relay, floor, checkpoints

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        row = dict(metrics[0])
        if row["epoch"] <= self.floor:
            return
        if checkpoint is not None:
            row["checkpoint_path"] = checkpoint.path  # as Ray's TuneReportCallback adds it
        forwarded = checkpoint if self.checkpoints else None
        try:
            ray.get(self.relay.put.remote((row, forwarded), wait=forwarded is not None))
        except ray.exceptions.RayActorError:  # the trial is being stopped (ASHA, a PBT pause): Tune removed the
            return  # placement group that held the relay; this controller goes down with the trial next
        self.floor = row["epoch"]
