"""Sweep configuration: a YAML file or shipped preset validated into typed models, with no Ray involved.

A sweep names a base training recipe (`recipe`, one of alignmixup's recipes, plus `train` overrides), a search
space over the hyperparameters in `tune_jobs.schema.HYPERPARAMETERS` (each fixed or a distribution), how many
seeds each configuration trains under (`repeats`), the scheduler (ASHA, FIFO, or a population-based schedule:
PBT or PB2 with the `mutations` it explores), how often a trial checkpoints (`checkpoint_every`), the search
algorithm, the failure policy, the storage and how each trial scales. Validation builds the trainer's own
`TrainConfig` for every candidate value, so an error such as a mixing layer the network lacks is caught here,
before any Ray process starts.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from alignmixup.config import Strict, TrainConfig, error_line
from alignmixup.console import ConfigError
from alignmixup.presets import RECIPES
from alignmixup.tracking import TrackingConfig
from alignmixup.trainer import evaluation_columns, every_epoch_metrics
from tune_jobs import storage
from tune_jobs.schema import HP_PREFIX, HYPERPARAMETERS, config_id, layers_text, milestones, trial_seed

NUMERIC = frozenset({"alpha", "eps", "lr", "weight_decay"})
DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform")
RANDOM = frozenset({"choice", "uniform", "loguniform"})  # kinds a search algorithm samples
# TrainConfig fields the sweep sets itself, and where the user sets them instead
SWEEP_OWNED = {
    "seed": "the top-level seed (each trial's seed is derived from it)",
    "split_seed": "the top-level seed",
    "device": "scaling.use_gpu",
    "epochs": "scheduler.max_t",
}
LAYERS_TEXT = re.compile(r"^\d+(,\d+)*$")
SCHEDULER_TAGS = frozenset({"asha", "fifo", "pbt", "pb2"})  # pydantic's union tags, not keys the user wrote
MUTABLE = ("alpha", "eps", "lr", "mix_layers")  # what a population-based schedule may change during a trial
POPULATION = frozenset({"pbt", "pb2"})  # schedulers that evolve a population (exploit and explore)
# Checkpoint every this many epochs by default (and always at ASHA's milestones, PBT's perturbations and the last
# epoch): benchmarks/checkpoint.py measures what a checkpoint costs; benchmarks/README.md has the reasoning.
CHECKPOINT_EVERY = 10


def sweep_error(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """A sweep's validation error as one line naming the key (the nearest valid key for an unknown one)."""
    return error_line(exc, prefix, skip=SCHEDULER_TAGS, model=model)


def parse_layers(text: str) -> list[int]:
    """Inverse of layers_text."""
    return [int(t) for t in text.split(",")]


def _canonical(value: Any) -> Any:
    """A list of layers becomes its text (Tune and Optuna need hashable, primitive categories)."""
    if isinstance(value, list):
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in value):
            raise ValueError(f"a list must hold mixing-layer numbers (got {value!r})")
        return layers_text(value)
    return value


class Param(BaseModel):
    """One hyperparameter: fixed (one value) or a distribution over values."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["fixed", "choice", "grid", "uniform", "loguniform"]
    values: tuple[Any, ...]  # fixed: (value,); choice/grid: the options; uniform/loguniform: (low, high)


def _parse_param(raw: Any) -> Param:
    """YAML form -> Param: a plain value is fixed; {choice|grid: [..]} or {uniform|loguniform: [lo, hi]}."""
    if isinstance(raw, Param):
        return raw
    if not isinstance(raw, dict):
        return Param(kind="fixed", values=(_canonical(raw),))
    if len(raw) != 1 or next(iter(raw)) not in DISTRIBUTIONS:
        raise ValueError(f"expected a value or one mapping with a key among {', '.join(DISTRIBUTIONS)}")
    (kind, values), = raw.items()
    if not isinstance(values, list) or not values:
        raise ValueError(f"{kind}: needs a non-empty list of values")
    if kind in ("uniform", "loguniform"):
        if len(values) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{kind}: needs [low, high] numbers (got {values!r})")
        low, high = float(values[0]), float(values[1])
        if not low < high:
            raise ValueError(f"{kind}: low must be < high (got {values!r})")
        if kind == "loguniform" and low <= 0:
            raise ValueError(f"loguniform: low must be > 0 (got {low!r})")
        return Param(kind=kind, values=(low, high))
    options = tuple(_canonical(v) for v in values)
    if len(set(options)) != len(options):
        raise ValueError(f"{kind}: repeated value in {values!r}")
    return Param(kind=kind, values=options)


def _dump_param(p: Param) -> Any:
    return p.values[0] if p.kind == "fixed" else {p.kind: list(p.values)}


SearchParam = Annotated[Param, BeforeValidator(_parse_param), PlainSerializer(_dump_param)]


class SearchSpace(Strict):
    """Hyperparameters to search; one left out keeps the recipe's value (or `train`'s)."""

    alpha: SearchParam | None = None
    mix_layers: SearchParam | None = None
    eps: SearchParam | None = None
    cost_scaling: SearchParam | None = None
    method: SearchParam | None = None
    lr: SearchParam | None = None
    weight_decay: SearchParam | None = None

    def params(self) -> dict[str, Param]:
        """The hyperparameters given, by name."""
        return {name: p for name in HYPERPARAMETERS if (p := getattr(self, name)) is not None}

    def fixed(self) -> set[str]:
        """The hyperparameters given one value (not searched)."""
        return {name for name, p in self.params().items() if p.kind == "fixed"}

    @model_validator(mode="after")
    def _kinds(self) -> SearchSpace:
        for name, p in self.params().items():
            if p.kind in ("uniform", "loguniform") and name not in NUMERIC:
                raise ValueError(f"{name}: {p.kind} needs a numeric hyperparameter; use choice or grid")
        if self.mix_layers is not None:
            bad = [v for v in self.mix_layers.values if not LAYERS_TEXT.match(str(v))]
            if bad:
                raise ValueError(f"mix_layers: expected layer lists such as [0, 4] or \"0,4\" (got {bad[0]!r})")
            self.mix_layers = Param(kind=self.mix_layers.kind, values=tuple(str(v) for v in self.mix_layers.values))
        return self


class _Scheduler(Strict):
    """What every scheduler has: the metric that ranks trials, its mode, and the epochs of a full trial."""

    metric: str = "val_acc"
    mode: Literal["max", "min"] = "max"
    max_t: int = Field(ge=1, description="epochs of a trial that is never stopped (its training length)")


class Asha(_Scheduler):
    """Asynchronous successive halving on `metric`, with the reported `epoch` as its time."""

    kind: Literal["asha"]
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)

    @model_validator(mode="after")
    def _grace(self) -> Asha:
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period: must be <= max_t ({self.max_t}), got {self.grace_period}")
        return self


class Fifo(_Scheduler):
    """Every trial runs max_t epochs; `metric`/`mode` only pick the best trial."""

    kind: Literal["fifo"]


class Objective(Strict):
    """One objective of a multi-objective sweep: a validation metric and whether higher or lower is better."""

    metric: str
    mode: Literal["max", "min"]
class Mutations(Strict):
    """What a population-based schedule explores: a choice (shifted to a neighbour or resampled) or a numeric
    range (multiplied by the perturbation factors or resampled, and kept within the range)."""

    alpha: SearchParam | None = None
    eps: SearchParam | None = None
    lr: SearchParam | None = None
    mix_layers: SearchParam | None = None

    def params(self) -> dict[str, Param]:
        """The hyperparameters mutated, by name."""
        return {name: p for name in MUTABLE if (p := getattr(self, name)) is not None}

    @model_validator(mode="after")
    def _kinds(self) -> Mutations:
        for name, p in self.params().items():
            if p.kind not in RANDOM:
                raise ValueError(f"{name}: a mutation is a choice or a uniform/loguniform range (got {p.kind})")
            if p.kind in ("uniform", "loguniform") and name not in NUMERIC:
                raise ValueError(f"{name}: {p.kind} needs a numeric hyperparameter; use choice")
        if self.mix_layers is not None:
            bad = [v for v in self.mix_layers.values if not LAYERS_TEXT.match(str(v))]
            if bad:
                raise ValueError(f"mix_layers: expected layer lists such as [0, 4] or \"0,4\" (got {bad[0]!r})")
            self.mix_layers = Param(kind="choice", values=tuple(str(v) for v in self.mix_layers.values))
        if not self.params():
            raise ValueError(f"a population-based schedule needs at least one of {', '.join(MUTABLE)}")
        return self


class _Population(_Scheduler):
    """Population-based training on `metric`: at every `perturbation_interval` epochs a trial in the bottom
    `quantile_fraction` continues from the checkpoint of one in the top, with explored hyperparameters."""

    perturbation_interval: int = Field(ge=1, description="epochs between exploit/explore decisions")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    mutations: Mutations

    @model_validator(mode="after")
    def _interval(self) -> _Population:
        if self.perturbation_interval >= self.max_t:
            raise ValueError(f"perturbation_interval: must be < max_t ({self.max_t}) for any exploit to happen "
                             f"(got {self.perturbation_interval})")
        return self


class Pbt(_Population):
    """Ray Tune's PopulationBasedTraining: random exploration of the mutations."""

    kind: Literal["pbt"]
    resample_probability: float = Field(0.25, ge=0, le=1)
    perturbation_factors: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (1.2, 0.8)


class Pb2(_Population):
    """Ray Tune's PB2: a Gaussian-process bandit chooses the explored values within numeric ranges."""

    kind: Literal["pb2"]

    @model_validator(mode="after")
    def _ranges(self) -> Pb2:
        for name, p in self.mutations.params().items():
            if p.kind not in ("uniform", "loguniform"):
                raise ValueError(f"mutations.{name}: PB2 explores numeric ranges only (got {p.kind}); give a "
                                 "uniform range, or use kind pbt for a choice such as mixing layers")
        return self


class Scaling(Strict):
    """Resources of one trial: its DDP workers and its Tune driver."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float | None = Field(None, ge=0, description="fractions let trials share a GPU; 1 by default")
    trial_cpus: float = Field(0.01, gt=0, description="the trial's driver (it only launches and watches)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    multi_node: bool = Field(False, description="a trial's workers span nodes: storage must be a shared URI")
    gpu_memory_gb: float | None = Field(
        None, gt=0, description="memory (GB, 1e9 bytes) of the GPU model the trials are packed for: each worker's "
        "estimated peak must fit gpus_per_worker of it; None: not checked"
    )

    @model_validator(mode="after")
    def _gpus(self) -> Scaling:
        if self.gpus_per_worker is None:
            self.gpus_per_worker = 1.0 if self.use_gpu else 0.0
        if not self.use_gpu and self.gpus_per_worker > 0:
            raise ValueError(f"gpus_per_worker: needs use_gpu: true (got {self.gpus_per_worker})")
        if self.use_gpu and self.gpus_per_worker == 0:
            raise ValueError("gpus_per_worker: must be > 0 with use_gpu: true")
        if self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            raise ValueError(f"gpus_per_worker: above 1 must be whole (got {self.gpus_per_worker})")
        if self.gpu_memory_gb is not None and not self.use_gpu:
            raise ValueError(f"gpu_memory_gb: needs use_gpu: true (got {self.gpu_memory_gb})")
        return self

    @property
    def threads(self) -> int:
        """torch CPU threads of one worker: its whole CPUs, at least one."""
        return max(1, int(self.cpus_per_worker))

    @property
    def devices(self) -> float:
        """Devices one trial occupies: GPUs on a GPU run, busy CPU threads on a CPU run."""
        per_worker = self.gpus_per_worker if self.use_gpu else self.threads
        return self.num_workers * per_worker


class SweepConfig(Strict):
    """A whole sweep; `name` and `storage` place it at <storage>/<name>."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    storage: str = "runs/tune"
    shared_storage: bool = Field(
        False, description="a local storage path is a mount every node of the cluster sees (NFS, a shared volume)"
    )
    seed: int = Field(8492, ge=0, description="seeds the search, the validation split and (derived) every trial")
    recipe: str | None = Field(None, description="an alignmixup recipe to start `train` from")
    train: dict[str, Any] = Field(default_factory=dict)
    search: SearchSpace = Field(default_factory=SearchSpace)
    repeats: int = Field(1, ge=1, description="seeds each sampled configuration trains under")
    scheduler: Asha | Fifo | Pbt | Pb2 = Field(discriminator="kind")
    objectives: list[Objective] | None = Field(
        None, min_length=2, description="multi-objective search (Optuna); the first is the one ASHA prunes on"
    )
    checkpoint_every: int = Field(CHECKPOINT_EVERY, ge=1, description="epochs between a trial's checkpoints (also "
                                  "at ASHA's milestones, PBT's perturbations and the last epoch)")
    search_alg: Literal["random", "optuna"] = "random"
    num_samples: int = Field(1, ge=1, description="configurations to sample (each trained `repeats` times)")
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="None: no limit for random search; Optuna: the trial slots of the cluster"
    )
    max_failures: int = Field(2, ge=0, description="retries of a trial (Tune) and of its workers (Train)")
    scaling: Scaling = Field(default_factory=Scaling)
    tracking: TrackingConfig | None = Field(None, description="log every trial to TensorBoard, MLflow and/or W&B")

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ValueError(f"recipe: unknown {self.recipe!r} (known: {', '.join(RECIPES)})")
        for key, where in SWEEP_OWNED.items():
            if key in self.train:
                raise ValueError(f"train.{key}: set by the sweep; use {where}")
        params = self.search.params()
        self._check_population()
        for name, p in params.items():
            if _lookup(self.train, HYPERPARAMETERS[name]) is not None:
                raise ValueError(f"search.{name}: also set in train; set it in one place")
            if self.search_alg == "optuna" and p.kind == "grid":
                raise ValueError(f"search.{name}: grid needs search_alg random (Optuna samples, it has no grid)")
        base = self._base()
        if base.get("val_fraction", TrainConfig.model_fields["val_fraction"].default) == 0:
            raise ValueError("train.val_fraction: a sweep selects on a validation split, never on the test set "
                             "(got 0; use e.g. 0.1)")
        try:
            cfg = TrainConfig.model_validate(base)
        except ValidationError as exc:
            raise ValueError(sweep_error(exc, prefix="train", model=TrainConfig)) from None
        for name, p in params.items():
            for value in p.values:
                _check_value(base, name, value)
        for name, p in self.mutated().items():
            for value in p.values:
                _check_value(base, name, value, where="scheduler.mutations")
        if self.num_samples > 1 and not any(p.kind in RANDOM for p in self.space().values()):
            raise ValueError(f"num_samples: with nothing to sample, every sample repeats the same configurations "
                             f"(got {self.num_samples}); use repeats: {self.num_samples} to train each under "
                             f"{self.num_samples} seeds")
        workers, batch = self.scaling.num_workers, cfg.batch_size
        if batch // workers < 2 or batch % workers:
            raise ValueError(f"scaling.num_workers: train.batch_size {batch} does not split into {workers} workers")
        reported = every_epoch_metrics(cfg)
        if self.scheduler.metric not in reported:
            raise ValueError(f"scheduler.metric: not reported at every epoch (got {self.scheduler.metric!r}; "
                             f"choose from {', '.join(reported)})")
        if self.objectives is not None:
            self._check_objectives(cfg)
        return self

    def _check_objectives(self, cfg: TrainConfig) -> None:
        """Multi-objective sweeps: Optuna searches, ASHA (or FIFO) acts on the first objective, and every objective is
        a validation metric reported whenever a trial can end (its last epoch, and ASHA's rungs)."""
        if self.search_alg != "optuna":
            raise ValueError(f"search_alg: objectives need optuna's multi-objective search (got {self.search_alg!r})")
        primary = self.objectives[0]
        if (primary.metric, primary.mode) != (self.scheduler.metric, self.scheduler.mode):
            raise ValueError(f"scheduler.metric: the scheduler acts on the first objective ({primary.metric}, "
                             f"{primary.mode}), got ({self.scheduler.metric}, {self.scheduler.mode})")
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives: repeated metric in {names}")
        at_every_end = {m for m in [*every_epoch_metrics(cfg), *evaluation_columns(cfg)] if m.startswith("val_")}
        for i, objective in enumerate(self.objectives):
            if objective.metric not in at_every_end:
                raise ValueError(f"objectives.{i}.metric: not a validation metric this sweep reports whenever a "
                                 f"trial ends (got {objective.metric!r}; choose from {', '.join(sorted(at_every_end))};"
                                 " evaluation metrics need train.evaluation.kinds)")

    def _check_population(self) -> None:
        """What a population-based schedule needs: random search, a population that runs at once, no repeats."""
        s = self.scheduler
        if s.kind not in POPULATION:
            return
        if self.search_alg != "random":
            raise ValueError(f"search_alg: {s.kind} needs random search (Tune's BasicVariantGenerator; PBT refuses "
                             f"a search algorithm), got {self.search_alg!r}")
        if self.repeats > 1:
            raise ValueError(f"repeats: {s.kind} evolves each trial's configuration (an exploit copies another "
                             f"trial's weights and hyperparameters), so repeats do not stay repeats (got "
                             f"{self.repeats}); the population is num_samples trials, each with its own seed")
        if self.trials() < 2:
            raise ValueError(f"num_samples: a {s.kind} population needs at least 2 trials (num_samples times each "
                             f"grid's size), got {self.trials()}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < self.trials():
            raise ValueError(f"max_concurrent_trials: {s.kind} needs the whole population at once ("
                             f"{self.trials()} trials), got {self.max_concurrent_trials}")
        for name, p in self.search.params().items():
            if p.kind != "fixed" and name not in s.mutations.params():
                raise ValueError(f"search.{name}: under {s.kind} an exploit copies the donor's {name}, so it would "
                                 f"change along a trial's lineage unrecorded; fix it, or explore it in "
                                 f"scheduler.mutations ({', '.join(MUTABLE)})")
        for name in s.mutations.params():
            if _lookup(self.train, HYPERPARAMETERS[name]) is not None:
                raise ValueError(f"scheduler.mutations.{name}: also set in train; give its starting values in "
                                 f"search.{name} (or leave them to be drawn from the mutation)")

    def trials(self) -> int:
        """How many trials the sweep runs: num_samples times each grid's size, times the repeats."""
        return self.num_samples * self.repeats * math.prod(len(p.values) for p in self.space().values()
                                                           if p.kind == "grid")

    def mutated(self) -> dict[str, Param]:
        """The hyperparameters a population-based schedule mutates ({} for ASHA and FIFO)."""
        return self.scheduler.mutations.params() if self.scheduler.kind in POPULATION else {}

    def space(self) -> dict[str, Param]:
        """What each trial starts from: the search space, plus each mutated hyperparameter it leaves out (drawn
        from its mutation, as Ray's PBT does)."""
        return {**self.mutated(), **self.search.params()}

    def _base(self) -> dict[str, Any]:
        """TrainConfig values before the search: recipe, then `train`, then what the sweep owns.

        Under ASHA the validation evaluations (calibration, robustness) also run at every rung below max_t, so that a
        trial stopped there still reports them (its objectives, its Pareto position).
        """
        base = {**(RECIPES[self.recipe] if self.recipe else {}), **self.train}
        base.update(seed=self.seed, split_seed=self.seed, epochs=self.scheduler.max_t,
                    device="cuda" if self.scaling.use_gpu else "cpu")
        base.setdefault("threads", self.scaling.threads)
        evaluation = dict(base.get("evaluation") or {})
        if self.scheduler.kind == "asha" and evaluation.get("kinds"):
            s = self.scheduler
            rungs = [int(m) for m in milestones(s.grace_period, s.max_t, s.reduction_factor) if m < s.max_t]
            base["evaluation"] = {**evaluation, "epochs": sorted({*evaluation.get("epochs", []), *rungs})}
        return base

    def trial_config(self, hyperparameters: dict[str, Any], seed: int | None = None) -> TrainConfig:
        """The TrainConfig of a trial with these sampled values (the others at their first value) and seed."""
        base = self._base()
        for name, p in self.space().items():
            _assign(base, name, hyperparameters.get(name, p.values[0]))
        if seed is not None:
            base["seed"] = seed
        return TrainConfig.model_validate(base)

    @property
    def metric(self) -> str:
        return self.scheduler.metric

    @property
    def mode(self) -> str:
        return self.scheduler.mode

    @property
    def search_metrics(self) -> tuple[str | list[str], str | list[str]]:
        """(metric, mode) the search algorithm optimises: the scheduler's, or every objective's."""
        if self.objectives is None:
            return self.metric, self.mode
        return [o.metric for o in self.objectives], [o.mode for o in self.objectives]


def hyperparameter_values(cfg: TrainConfig) -> dict[str, Any]:
    """Every searchable hyperparameter's value in a TrainConfig (mixing layers as text)."""
    out: dict[str, Any] = {}
    for name, path in HYPERPARAMETERS.items():
        value: Any = cfg
        for part in path:
            value = getattr(value, part)
        out[name] = layers_text(value) if name == "mix_layers" else value
    return out


def trial_settings(sweep: SweepConfig, sampled: dict[str, Any], repeat: int) -> tuple[TrainConfig, dict[str, Any]]:
    """A trial's TrainConfig, seeded for its configuration and repeat, and what its reports say about it.

    The second value holds the trial's identity (config_id, seed, repeat, dataset, network, width) and its
    hyperparameters as hp_<name> columns: the worker adds it to every report.
    """
    values = hyperparameter_values(sweep.trial_config(sampled))
    cid = config_id(values)
    cfg = sweep.trial_config(sampled, seed=trial_seed(sweep.seed, cid, repeat))
    identity = {"config_id": cid, "seed": cfg.seed, "repeat": repeat, "dataset": cfg.dataset,
                "network": cfg.network, "width": cfg.width}
    return cfg, {**identity, **{HP_PREFIX + k: v for k, v in values.items()}}


def _lookup(mapping: dict[str, Any], path: tuple[str, ...]) -> Any:
    """mapping[path[0]][path[1]]..., or None where a level is missing."""
    for part in path:
        if not isinstance(mapping, dict) or part not in mapping:
            return None
        mapping = mapping[part]
    return mapping


def _assign(base: dict[str, Any], name: str, value: Any) -> None:
    """Set hyperparameter `name` inside a TrainConfig dict (mixing-layer text becomes a list)."""
    *parents, leaf = HYPERPARAMETERS[name]
    target = base
    for part in parents:
        sub = target.get(part)
        target[part] = dict(sub.model_dump() if isinstance(sub, BaseModel) else sub or {})
        target = target[part]
    target[leaf] = parse_layers(value) if name == "mix_layers" and isinstance(value, str) else value


def _check_value(base: dict[str, Any], name: str, value: Any, where: str = "search") -> None:
    """Raise `<where>.<name>: ...` if TrainConfig rejects this value."""
    trial = {**base}
    try:
        _assign(trial, name, value)
        TrainConfig.model_validate(trial)
    except ValidationError as exc:
        raise ValueError(f"{where}.{name}: {sweep_error(exc).split(': ', 1)[-1]}") from None


# ----------------------------------------------------------------------------------- loading


def validate(raw: dict[str, Any]) -> SweepConfig:
    """Validate a raw mapping; errors become a one-line ConfigError naming the key."""
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(sweep_error(exc, model=SweepConfig)) from None


def experiment_path(storage_location: str, name: str) -> str:
    """<storage>/<name>, a local directory made absolute or a URI."""
    return storage.join(storage.absolute(storage_location), name)
