"""Checks a sweep must pass before any trial starts; each failure is one ConfigError naming the key.

The checks are pure functions of the sweep and, for those about a cluster, of a `ClusterView` (the alive nodes'
resources, the node that runs the sweep's driver, whether the cluster autoscales), so that tests describe clusters
as plain data. `run` performs the ones that need no cluster (modules, storage, GPU packing) before Ray starts and
the cluster's (resources, storage seen from the nodes) once it has joined (`check_joined_cluster`); a dry run
also checks the data directory, on this machine or on every node that can run a worker.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from alignmixup.console import ConfigError
from tune_jobs import storage
from tune_jobs.config import SweepConfig

if TYPE_CHECKING:
    from alignmixup.config import TrainConfig
    from alignmixup.memory import MemoryEstimate

# Python modules a sweep setting makes Ray Tune import, by (setting, value): ray.tune.search.optuna needs optuna.
# Every one of them must be a runtime dependency of the package (tests/test_preflight.py checks pyproject.toml and
# the installed metadata against this table and against what building the preset's searcher actually imports).
SETTING_MODULES: dict[tuple[str, str], tuple[str, ...]] = {
    ("search_alg", "optuna"): ("optuna",),
}
AUTOSCALING_ENV = "ALIGNMIXUP_AUTOSCALING"  # "1" on a cluster's head: nodes come and go (cluster/*.yaml set it)
MEMORY_CHOICES = ("mix_layers", "method")  # the searched hyperparameters that change a worker's memory


# ----------------------------------------------------------------------------------- no cluster needed


def setting_value(sweep: SweepConfig, setting: str) -> str:
    """The value of a top-level sweep setting that selects code: search_alg, or the scheduler's kind."""
    value = getattr(sweep, setting)
    return str(getattr(value, "kind", value))


def needed_modules(sweep: SweepConfig) -> dict[str, tuple[str, ...]]:
    """The Python modules this sweep's settings need, by setting."""
    return {setting: modules for (setting, value), modules in SETTING_MODULES.items()
            if setting_value(sweep, setting) == value}


def check_modules(sweep: SweepConfig) -> None:
    """Every module the sweep's scheduler and search algorithm need is importable here."""
    for setting, modules in needed_modules(sweep).items():
        for module in modules:
            if importlib.util.find_spec(module) is None:
                raise ConfigError(f"{setting}: {setting_value(sweep, setting)} needs the Python module {module}, "
                                  f"which is not installed (it is a dependency of alignmixup: pip install .)")


def check_storage(sweep: SweepConfig, cluster: ClusterView | None = None, probe_uri: bool = False) -> None:
    """Storage every node that runs a trial sees, and that can be written.

    A local path is refused for multi-node trials, and on a cluster whose trials can run away from the driver's
    node (more than one node, an autoscaling one, or a driver node that cannot run a worker), unless the sweep
    declares it a mount every node sees (shared_storage). A local path must be writable here; a URI is probed
    (credentials, bucket: a PUT and a DELETE) when probe_uri, as `run` does before it starts anything.
    """
    location = sweep.storage
    if storage.is_uri(location):
        if location.startswith("file://"):
            raise ConfigError(f"storage: give a local directory as a plain path (got {location})")
        if not probe_uri:
            return
    elif not sweep.shared_storage:
        away = cluster.trials_away(sweep) if cluster else None
        reason = "a multi-node trial needs storage every node sees" if sweep.scaling.multi_node else \
            f"{away}, so they need storage every node sees" if away else None
        if reason:
            raise ConfigError(
                f"storage: {reason} (a checkpoint on a local path vanishes with its node, and a retry restarts "
                f"from epoch 0); give a URI such as s3://bucket/sweeps or gs://bucket/sweeps, or declare a path "
                f"every node mounts with shared_storage: true (got the local path {location})"
            )
    try:
        storage.check_writable(location)
    except (OSError, ValueError) as exc:  # ValueError: pyarrow's ArrowInvalid, e.g. an unknown URI parameter
        reason = (getattr(exc, "strerror", None) or str(exc)).strip().splitlines()[0]
        raise ConfigError(f"storage: cannot write to {location} ({reason})") from None


def memory_candidates(sweep: SweepConfig) -> list[TrainConfig]:
    """A trial configuration for every combination of the searched (or mutated) values that change a worker's memory."""
    params = sweep.space()  # under PBT/PB2 also what the mutations may move a trial to
    choices = {name: params[name].values for name in MEMORY_CHOICES
               if name in params and params[name].kind in ("fixed", "choice", "grid")}
    names = list(choices)
    return [sweep.trial_config(dict(zip(names, combo, strict=True))) for combo in itertools.product(*choices.values())]


def estimate_memory(sweep: SweepConfig) -> tuple[MemoryEstimate, TrainConfig]:
    """The largest per-worker peak GPU memory over the sweep's search space, and the trial configuration it is of."""
    from alignmixup.memory import estimate_peak_gb

    estimates = [(estimate_peak_gb(cfg, sweep.scaling.num_workers), cfg) for cfg in memory_candidates(sweep)]
    return max(estimates, key=lambda pair: pair[0].peak_gb)


def check_memory(sweep: SweepConfig) -> MemoryEstimate | None:
    """A GPU sweep's workers fit the share of the GPU they are given (scaling.gpu_memory_gb); the estimate, or None."""
    s = sweep.scaling
    if not s.use_gpu:
        return None
    estimate, cfg = estimate_memory(sweep)
    if s.gpu_memory_gb is not None and s.gpus_per_worker is not None:
        share = s.gpus_per_worker * s.gpu_memory_gb
        if share < estimate.peak_gb:
            where = f"mixing at layer {estimate.mix_layer} of mix_layers {cfg.mix_layers}" \
                if estimate.mix_layer is not None else "without mixing"
            parts = ", ".join(f"{k.removesuffix('_gb')} {v:.1f}" for k, v in estimate.parts().items()
                              if k not in ("allocated_gb", "peak_gb"))
            raise ConfigError(
                f"scaling.gpus_per_worker: {s.gpus_per_worker:g} of a {s.gpu_memory_gb:g} GB GPU is {share:.1f} GB, "
                f"but a worker needs about {estimate.peak_gb:.1f} GB at its peak ({parts} GB; batch "
                f"{estimate.per_worker_batch} per worker, {where}); give each worker a larger share of the GPU, or "
                f"leave that layer out of search.mix_layers"
            )
    return estimate


def check_gpu_sharing(sweep: SweepConfig) -> None:
    """Two workers of one trial never share a GPU: NCCL refuses two ranks of one communicator on one device.

    (ncclCommInitRank fails with ncclInvalidUsage, "Duplicate GPU detected"; NCCL's documentation: "Using the same
    CUDA device multiple times as different ranks of the same NCCL communicator is not supported".) Trials share
    GPUs instead: one worker per trial with a fractional gpus_per_worker, as the presets do.
    """
    s = sweep.scaling
    if s.use_gpu and s.num_workers > 1 and (s.gpus_per_worker or 0) < 1 and s.placement_strategy != "STRICT_SPREAD":
        raise ConfigError(
            f"scaling.gpus_per_worker: {s.gpus_per_worker:g} GPU per worker puts {s.num_workers} workers of one trial "
            f"on one GPU, where NCCL cannot run two ranks of a trial's process group (ncclInvalidUsage: Duplicate GPU "
            f"detected); use whole GPUs per worker and share GPUs between trials (num_workers: 1, a fractional "
            f"gpus_per_worker), or placement_strategy: STRICT_SPREAD (one worker per node)"
        )


def check_packing(sweep: SweepConfig) -> MemoryEstimate | None:
    """How the sweep shares GPUs, from the sweep alone: no two ranks of a trial on one GPU, every worker's estimated
    peak memory within its share of the GPU it names; returns the estimate (None for a CPU sweep)."""
    check_gpu_sharing(sweep)
    return check_memory(sweep)


def check_data(sweep: SweepConfig) -> None:
    """The sweep's data directory, on this machine, holds its data set in the readers' layout (nothing downloaded)."""
    from alignmixup.data import DataError, check_layout

    try:
        check_layout(sweep.trial_config({}))
    except DataError as exc:
        raise ConfigError(f"train.{exc}") from None


def check_local(sweep: SweepConfig) -> MemoryEstimate | None:
    """What `run` checks before Ray starts, besides the storage: modules and GPU packing; returns the estimate."""
    check_modules(sweep)
    return check_packing(sweep)


# ----------------------------------------------------------------------------------- a cluster


@dataclass(frozen=True)
class Node:
    """An alive node: its id, its address and the resources Ray sees on it (CPU, GPU, ...)."""

    node_id: str
    address: str
    resources: dict[str, float] = field(hash=False)

    def worker_slots(self, sweep: SweepConfig) -> int:
        """How many of the sweep's trial workers fit on this node when it is empty."""
        s = sweep.scaling
        slots = math.floor(self.resources.get("CPU", 0.0) / s.cpus_per_worker + 1e-9)
        if s.use_gpu and s.gpus_per_worker:
            slots = min(slots, math.floor(self.resources.get("GPU", 0.0) / s.gpus_per_worker + 1e-9))
        return slots

    def summary(self) -> str:
        gpus = self.resources.get("GPU", 0.0)
        return f"CPU {self.resources.get('CPU', 0.0):g}" + (f", GPU {gpus:g}" if gpus else "")


@dataclass(frozen=True)
class ClusterView:
    """What the checks need to know of a cluster: what it is, its alive nodes, the driver's node, autoscaling.

    name: how errors call it, e.g. "the cluster at 10.0.0.1:6379".
    """

    name: str
    nodes: tuple[Node, ...]
    driver_node: str | None = None
    autoscaling: bool = False

    @classmethod
    def from_ray_nodes(cls, name: str, nodes: Sequence[dict[str, Any]], driver_node: str | None = None,
                       autoscaling: bool = False) -> ClusterView:
        """From ray.nodes()'s records (dead nodes left out)."""
        alive = tuple(Node(n["NodeID"], n.get("NodeManagerAddress", ""), dict(n.get("Resources", {})))
                      for n in nodes if n.get("Alive", n.get("alive", False)))
        return cls(name, alive, driver_node, autoscaling)

    def summary(self) -> str:
        """`N node(s): CPU a, GPU b; ...`, as printed in errors."""
        return f"{len(self.nodes)} node{'s' * (len(self.nodes) != 1)}: " + "; ".join(n.summary() for n in self.nodes)

    def trials_away(self, sweep: SweepConfig) -> str | None:
        """Why a trial of this sweep can run on a node other than the driver's, or None if it cannot."""
        if self.autoscaling:
            return f"{self.name} autoscales ({AUTOSCALING_ENV}=1): trials run on the nodes it adds"
        if len(self.nodes) > 1:
            return f"{self.name} has {len(self.nodes)} nodes: trials run on any of them"
        driver = next((n for n in self.nodes if n.node_id == self.driver_node), None)
        if driver is not None and driver.worker_slots(sweep) < 1:
            return f"the driver's node ({driver.summary()}) cannot run a worker: trials run on other nodes"
        return None


def check_resources(sweep: SweepConfig, cluster: ClusterView) -> None:
    """A trial of the sweep fits the cluster's nodes (skipped on an autoscaling cluster: its nodes are not all up).

    The cluster of a static cluster is all there is: a trial that does not fit would wait for resources forever.
    """
    if cluster.autoscaling:
        return
    s, nodes, where = sweep.scaling, cluster.nodes, f"{cluster.name} ({cluster.summary()})"
    hint = (f"; an autoscaling cluster that adds nodes on demand: set {AUTOSCALING_ENV}=1 on its head, as "
            f"cluster/*.yaml do")
    if s.use_gpu and not any(n.resources.get("GPU", 0.0) > 0 for n in nodes):
        raise ConfigError(f"scaling.use_gpu: {where} has no GPU; set use_gpu: false or join a cluster with GPUs{hint}")
    if not any(n.resources.get("CPU", 0.0) + 1e-9 >= s.cpus_per_worker for n in nodes):
        raise ConfigError(f"scaling.cpus_per_worker: a worker asks {s.cpus_per_worker:g} CPUs, more than any node of "
                          f"{where} has{hint}")
    if s.use_gpu and not any(n.resources.get("GPU", 0.0) + 1e-9 >= (s.gpus_per_worker or 0) for n in nodes):
        raise ConfigError(f"scaling.gpus_per_worker: a worker asks {s.gpus_per_worker:g} GPUs, more than any node of "
                          f"{where} has{hint}")
    slots = [n.worker_slots(sweep) for n in nodes]
    if not any(slots):
        raise ConfigError(f"scaling.cpus_per_worker: no node of {where} has {s.cpus_per_worker:g} CPUs and "
                          f"{s.gpus_per_worker:g} GPUs together for one worker{hint}")
    fits = {"STRICT_PACK": max(slots), "STRICT_SPREAD": sum(1 for k in slots if k)}.get(s.placement_strategy,
                                                                                         sum(slots))
    if fits < s.num_workers:
        raise ConfigError(f"scaling.num_workers: a trial's {s.num_workers} workers ({s.placement_strategy}) do not fit "
                          f"{where}: at most {fits} at once{hint}")
    if not any(n.resources.get("CPU", 0.0) + 1e-9 >= s.trial_cpus for n in nodes):
        raise ConfigError(f"scaling.trial_cpus: the trial's driver asks {s.trial_cpus:g} CPUs, more than any node of "
                          f"{where} has{hint}")


def check_cluster(sweep: SweepConfig, cluster: ClusterView, probe_uri: bool = False) -> None:
    """The checks that need the cluster: its resources, then storage seen from its nodes."""
    check_resources(sweep, cluster)
    check_storage(sweep, cluster, probe_uri=probe_uri)


# ----------------------------------------------------------------------------------- the Ray edge


def autoscaling_declared() -> bool:
    """Whether this process runs where the cluster says it autoscales (ALIGNMIXUP_AUTOSCALING=1)."""
    return os.environ.get(AUTOSCALING_ENV, "").strip().lower() in ("1", "true", "yes")


def describe_cluster() -> ClusterView:
    """The view of the cluster this process has joined (ray.init done)."""
    import ray

    context = ray.get_runtime_context()
    return ClusterView.from_ray_nodes(f"the cluster at {context.gcs_address}", ray.nodes(), context.get_node_id(),
                                      autoscaling_declared())


def local_view() -> ClusterView:
    """What a new local Ray cluster on this machine would have (no Ray started): its CPUs and CUDA devices."""
    import torch

    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    gpus = float(torch.cuda.device_count())
    return ClusterView("a new local cluster on this machine", (Node("local", "localhost", {"CPU": cpus, "GPU": gpus}),),
                       driver_node="local")


def check_joined_cluster(sweep: SweepConfig) -> None:
    """After ray.init, before any trial: the cluster's resources and storage seen from its nodes."""
    check_cluster(sweep, describe_cluster())


def _layout_problem(train: dict[str, Any]) -> str | None:
    """On a node: the data directory's layout problem, or None."""
    from alignmixup.config import TrainConfig
    from alignmixup.data import DataError, check_layout

    try:
        check_layout(TrainConfig.model_validate(train))
    except DataError as exc:
        return str(exc)
    return None


def check_data_on_nodes(sweep: SweepConfig, cluster: ClusterView) -> list[Node]:
    """Check the data directory on every alive node that can run a worker, with a zero-CPU task pinned to each.

    Returns the nodes checked (none on an autoscaling cluster whose worker nodes are not up yet).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in cluster.nodes if n.worker_slots(sweep) > 0]
    train = sweep.trial_config({}).model_dump(mode="json")
    task = ray.remote(num_cpus=0)(_layout_problem)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote(train)
            for n in nodes]
    for node, problem in zip(nodes, ray.get(refs), strict=True):
        if problem is not None:
            raise ConfigError(f"train.{problem} on node {node.address}")
    return nodes


# ----------------------------------------------------------------------------------- reports


def memory_line(sweep: SweepConfig, estimate: MemoryEstimate) -> str:
    """One line: a worker's estimated peak GPU memory, its parts, and how it fits the GPU share it is given."""
    s = sweep.scaling
    parts = ", ".join(f"{k.removesuffix('_gb')} {v:.2f}" for k, v in estimate.parts().items()
                      if k not in ("allocated_gb", "peak_gb"))
    where = f"mixing at layer {estimate.mix_layer}" if estimate.mix_layer is not None else "no mixing"
    line = (f"GPU memory: about {estimate.peak_gb:.1f} GB per worker at its peak ({parts} GB; batch "
            f"{estimate.per_worker_batch}, {where})")
    if s.gpu_memory_gb is not None and s.gpus_per_worker is not None:
        share = s.gpus_per_worker * s.gpu_memory_gb
        line += f"; fits {s.gpus_per_worker:g} x {s.gpu_memory_gb:g} GB = {share:.1f} GB with " \
                f"{share - estimate.peak_gb:.1f} GB to spare"
    return line


def dry_run(sweep: SweepConfig, experiment: str, address: str | None) -> list[str]:
    """Everything `run` would need, checked with nothing started (ConfigError at the first problem); the report.

    `run` has checked the sweep and probed its storage already (cli.prepare_run).

    With an address (or RAY_ADDRESS) the cluster is joined and its nodes are checked: resources, storage as they see
    it, and the data directory on every node that can run a worker (a zero-CPU task each); without one, what a new
    local cluster would have and the data directory here. The storage is probed (a URI gets a PUT and a DELETE).
    """
    report = [f"sweep: valid, {sweep.num_samples} sample(s) x {sweep.repeats} repeat(s), {sweep.search_alg} search, "
              f"{sweep.scheduler.kind} over {sweep.scheduler.max_t} epochs",
              f"storage: {sweep.storage} writable (a probe written and deleted), {experiment} free"]
    check_modules(sweep)
    modules = [m for ms in needed_modules(sweep).values() for m in ms]
    if modules:
        report.append(f"modules: {', '.join(modules)} importable")
    estimate = check_packing(sweep)
    if estimate is not None:
        report.append(memory_line(sweep, estimate))
    address = address or os.environ.get("RAY_ADDRESS")
    data_dir = sweep.trial_config({}).data_dir
    if not address:
        view = local_view()
        check_cluster(sweep, view)
        check_data(sweep)
        report.append(f"cluster: {view.name}, {view.summary()}; a trial fits")
        report.append(f"data: {data_dir or 'scikit-learn digits'} laid out as the reader expects, on this machine")
        return report
    import ray

    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"address: cannot join the cluster at {address} ({str(exc).strip().splitlines()[0]})") \
            from None
    try:
        view = describe_cluster()
        check_cluster(sweep, view)
        nodes = check_data_on_nodes(sweep, view)
    finally:
        ray.shutdown()
    scaling = "autoscaling: resources of nodes not up yet unchecked" if view.autoscaling else "a trial fits"
    report.append(f"cluster: {view.name}, {view.summary()}; {scaling}")
    if nodes:
        report.append(f"data: {data_dir or 'scikit-learn digits'} laid out as the reader expects, on "
                      f"{', '.join(n.address for n in nodes)}")
    else:
        report.append("data: not checked, no node that can run a worker is up (the autoscaler adds them)")
    return report
