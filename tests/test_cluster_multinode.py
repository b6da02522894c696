"""Multi-node DDP on simulated nodes (ray.cluster_utils.Cluster): a trial of tune_jobs with its two gloo
workers spread over two nodes trains disjoint shards, and survives losing one worker's node mid-trial; before it
starts, the preflight refuses the sweep's local storage path on this multi-node cluster until it is declared shared.

The scenario runs once, in a fresh interpreter (this file as a script), so its Ray cluster cannot meet any
Ray state of the test process: a head without CPUs and three 1-CPU nodes; the sweep's single trial puts its
two workers on two of them (STRICT_SPREAD); once the trial has checkpointed epoch 2, a node that runs a
worker but not the trial's driver is removed, and the restarted workers spread over the two that are left.
(The spare node is there from the start: a node added from the watcher thread after the removal never
registered, and the restarted trial waited for it forever.) A worker setup hook records, in every training
process, the indices each rank trains on in each epoch, with its node and pid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from helpers.net import free_port
from helpers.sweeps import latest_reports

REPO = Path(__file__).resolve().parent.parent
RECORDS_ENV = "ALIGNMIXUP_TEST_RECORDS"
MAX_T = 4
KILL_AT_EPOCH = 2
SWEEP: dict[str, Any] = {
    "name": "spread",
    "train": {"dataset": "digits", "width": 0.25, "batch_size": 128, "lr_schedule": "cosine"},
    "search": {"alpha": 1.0, "mix_layers": "0,4", "eps": 0.1},
    "scheduler": {"kind": "fifo", "max_t": MAX_T},
    "num_samples": 1,
    "max_failures": 2,
    "checkpoint_every": 1,  # the node goes once epoch KILL_AT_EPOCH's checkpoint is registered
    "scaling": {
        "num_workers": 2, "cpus_per_worker": 0.49, "trial_cpus": 0.01, "placement_strategy": "STRICT_SPREAD"
    },
}


def record_epochs() -> None:
    """Worker setup hook: each Trainer epoch first saves (rank, world, node, pid, epoch, its indices)."""
    import ray

    from alignmixup.trainer import Trainer

    train_epoch = Trainer.train_epoch

    def recording(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        node = ray.get_runtime_context().get_node_id()
        record = {"rank": self.rank, "world": self.world_size, "node": node, "pid": os.getpid(),
                  "epoch": self.epoch, "time": time.time(), "indices": self.train_indices(self.epoch)}
        path = Path(os.environ[RECORDS_ENV]) / f"r{self.rank}-e{self.epoch}-p{os.getpid()}.pt"
        torch.save(record, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)  # readers never see a half-written record
        return train_epoch(self, *args, **kwargs)

    Trainer.train_epoch = recording  # type: ignore[method-assign]


def load_records(folder: Path) -> list[dict[str, Any]]:
    """Every record written so far, oldest first."""
    return sorted((torch.load(p) for p in folder.glob("*.pt")), key=lambda r: r["time"])


def remove_a_worker_node(cluster: Any, records: Path, out: Path) -> None:
    """Once Ray Train has registered the checkpoint of epoch KILL_AT_EPOCH (the workers are in the next one),
    remove the node that runs a worker but not the trial driver; record it and the registered epoch."""
    from ray.util.state import list_actors

    experiment = out / "runs" / SWEEP["name"]
    registered = 0
    while registered < KILL_AT_EPOCH:
        time.sleep(0.2)
        registered = max((r["epoch"] for r in latest_reports(experiment).values()), default=0)
    alive = list_actors(filters=[("state", "=", "ALIVE")])
    drivers = {a.node_id for a in alive if "ImplicitFunc" in a.class_name}  # Tune's trial driver
    victim = next(r["node"] for r in load_records(records) if r["node"] not in drivers)
    cluster.remove_node(next(n for n in cluster.list_all_nodes() if n.node_id == victim))
    (out / "removed").write_text(f"{victim}\n{registered}\n{time.time()}\n")


def scenario(out: Path) -> None:
    """The whole run (in its own interpreter): cluster, sweep, node loss, shutdown."""
    os.environ["RAY_TMPDIR"] = str(out)  # Cluster writes its address under here, not /tmp/ray
    (out / "ray").mkdir()
    records = out / "records"
    records.mkdir()
    import ray
    from ray.cluster_utils import Cluster

    from alignmixup.console import ConfigError
    from tune_jobs import driver, preflight
    from tune_jobs.config import validate

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "dashboard_port": free_port()})
    try:
        for _ in range(3):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, runtime_env={
            "worker_process_setup_hook": record_epochs, "env_vars": {RECORDS_ENV: str(records)}
        })
        killer = threading.Thread(target=remove_a_worker_node, args=(cluster, records, out), daemon=True)
        killer.start()
        sweep = validate({**SWEEP, "storage": str(out / "runs")})
        # driver.run's preflight: a local storage path on a multi-node cluster is refused unless declared shared
        try:
            preflight.check_joined_cluster(sweep)
        except ConfigError as exc:
            (out / "refused").write_text(str(exc))
        sweep = sweep.model_copy(update={"shared_storage": True})  # all nodes on one machine: the path is shared
        preflight.check_joined_cluster(sweep)
        checked = preflight.check_data_on_nodes(sweep, preflight.describe_cluster())  # a dry run's, one task a node
        (out / "data_checked").write_text("\n".join(n.node_id for n in checked))
        experiment = str(out / "runs" / sweep.name)
        # driver.run minus its ray.init: this process is connected already, with the recording hook
        driver.make_tuner(sweep, experiment, None).fit()
        driver.finish(sweep, experiment, None)
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def run() -> Any:
    """Run the scenario; yields its folder (records/, runs/spread/ tables, removed)."""
    out = Path(tempfile.mkdtemp(prefix="raymn", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": path}
    try:
        done = subprocess.run([sys.executable, __file__, str(out)], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        yield out
    finally:
        shutil.rmtree(out, ignore_errors=True)


def attempts(records: list[dict[str, Any]]) -> dict[tuple[int, int], dict[int, dict[str, Any]]]:
    """{(attempt, epoch): {rank: record}}; a rank's n-th process (pid) is its n-th attempt."""
    pids: dict[int, list[int]] = defaultdict(list)
    out: dict[tuple[int, int], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        if r["pid"] not in pids[r["rank"]]:
            pids[r["rank"]].append(r["pid"])
        out[(pids[r["rank"]].index(r["pid"]), r["epoch"])][r["rank"]] = r
    return out


def test_preflight_refuses_a_local_storage_path_unless_shared(run: Path) -> None:
    refused = (run / "refused").read_text()
    assert refused.startswith("storage: the cluster at ") and "has 4 nodes" in refused, refused
    assert "shared_storage: true" in refused
    assert len((run / "data_checked").read_text().split()) == 3  # the three nodes with CPUs, not the head


def test_two_workers_on_two_nodes_train_disjoint_shards(run: Path) -> None:
    steps = attempts(load_records(run / "records"))
    assert {epoch for _, epoch in steps} == set(range(MAX_T))
    for (attempt, epoch), ranks in steps.items():
        if set(ranks) != {0, 1}:  # a rank killed before it started this epoch
            assert attempt == 0 and epoch >= KILL_AT_EPOCH
            continue
        r0, r1 = ranks[0], ranks[1]
        assert r0["world"] == r1["world"] == 2
        assert r0["node"] != r1["node"], f"attempt {attempt}, epoch {epoch}: both workers on one node"
        a, b = set(r0["indices"].tolist()), set(r1["indices"].tolist())
        assert len(a) == len(b) == len(r0["indices"]) > 0 and not a & b, f"epoch {epoch}: shards overlap"


def test_trial_finishes_from_its_last_checkpoint_after_losing_a_node(run: Path) -> None:
    removed, registered = (run / "removed").read_text().split()[:2]
    records = load_records(run / "records")
    steps = attempts(records)
    first = [r for (attempt, _), ranks in steps.items() if attempt == 0 for r in ranks.values()]
    again = [r for (attempt, _), ranks in steps.items() if attempt == 1 for r in ranks.values()]
    assert removed in {r["node"] for r in first} and removed not in {r["node"] for r in again}
    last_started = max(r["epoch"] for r in first if r["rank"] == 0)  # epochs checkpointed when the node went
    assert KILL_AT_EPOCH <= last_started < MAX_T
    # resumed from the newest registered checkpoint (one may register between our read and the removal)
    assert KILL_AT_EPOCH <= int(registered) <= min(r["epoch"] for r in again) <= last_started
    assert max(r["epoch"] for r in again) == MAX_T - 1

    experiment = run / "runs" / SWEEP["name"]
    trials = pd.read_parquet(experiment / "trials.parquet")
    epochs = pd.read_parquet(experiment / "epochs.parquet")
    assert trials[["status", "epochs"]].values.tolist() == [["TERMINATED", MAX_T]]
    assert sorted(epochs["epoch"]) == list(range(1, MAX_T + 1))  # every epoch reported once, none redone


if __name__ == "__main__":
    scenario(Path(sys.argv[1]))
