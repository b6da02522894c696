"""Validated configuration of one training run (pydantic), and the one-line error messages of every config.

`Strict` is the base of every configuration model in the project (unknown keys are errors) and `error_line`
turns pydantic's report into the one line a command prints before it exits with code 2.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from alignmixup.models import MODELS
from alignmixup.sinkhorn import CostScaling, StopRule, resolve_rule

Method = Literal["alignmixup", "mixup", "manifold", "erm"]
Dataset = Literal["digits", "cifar10", "cifar100", "tinyimagenet", "imagenet"]
DATASETS: tuple[str, ...] = get_args(Dataset)
KEYED = re.compile(r"^[A-Za-z_][\w.]*: ")  # a validator message that starts with the key it is about


def error_line(exc: ValidationError, prefix: str = "", skip: frozenset[str] = frozenset(),
               model: type[BaseModel] | None = None) -> str:
    """The first pydantic error as one line `key.path: message (got value)`.

    `prefix` goes in front of the key path; `skip` drops path parts that are not keys the user wrote (the tag
    pydantic adds for each member of a discriminated union). With the `model` that was validated, an unknown key
    is reported first (a misspelt key also makes the real one "missing") with the nearest valid key.
    """
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = [prefix] if prefix else []
    loc += [str(p) for p in err["loc"] if p not in skip]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden" and model is not None:
        key, known = str(err["loc"][-1]), _known_keys(model, [str(p) for p in err["loc"][:-1]])
        near = [k for k in known if k.startswith(key)] or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}?" if near else f"expected one of {', '.join(known)}"
        return f"{'.'.join(loc)}: unknown key ({hint})"
    if KEYED.match(msg) or not loc:  # a model-level check names its key itself
        return ".".join([*loc, msg])
    got = err.get("input")
    shown = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {got!r})"
    return f"{'.'.join(loc)}: {msg}{shown}"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (itself, or the members of a union or optional)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _known_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    """The valid keys at `path` inside `model` (path parts that are no field, such as union tags, are passed over)."""
    models = [model]
    for part in path:
        inner = [m for outer in models if part in outer.model_fields
                 for m in _models_in(outer.model_fields[part].annotation)]
        models = inner or models
    return sorted({name for m in models for name in m.model_fields})


class Strict(BaseModel):
    """A configuration model in which an unknown key is an error."""

    model_config = ConfigDict(extra="forbid")


class SinkhornConfig(Strict):
    """Sinkhorn settings of aligned mixing (alignmixup.sinkhorn); the defaults are the release's.

    `stop: auto` picks the rule from the cost scaling, so a user need not know it: the release's rule with
    cost_scaling "none" (tol 0.1 on the batch-mean L1 change of the row potential, at most 100 iterations;
    the six published presets, unchanged), the marginal rule with "mean" (mean |R·1 - 1| <= 0.01 over rows
    and batch, eps-scaling warm start, at most 1000 iterations at the target eps). `tol` and `max_iter` left
    None take the chosen rule's own (sinkhorn.RULE_DEFAULTS); set, they are checked against it.
    """

    eps: float = Field(0.1, gt=0, le=1e3, description="entropic regularisation")
    cost_scaling: CostScaling = "none"
    stop: StopRule = "auto"
    tol: float | None = Field(None, gt=0, description="None: the rule's own (release 0.1, marginal 0.01)")
    max_iter: int | None = Field(None, ge=1, le=10_000, description="None: the rule's own (100; marginal 1000)")
    compiled: bool = Field(False, description="torch.compile'd iteration blocks (pays on CUDA)")

    @field_validator("tol")
    @classmethod
    def _tol_fits_the_rule(cls, tol: float | None, info: ValidationInfo) -> float | None:
        rule = resolve_rule(info.data.get("stop", "auto"), info.data.get("cost_scaling", "none"))
        if tol is not None and rule == "fixed":
            raise ValueError("the fixed rule has no tolerance; leave it unset")
        if tol is not None and rule == "marginal" and not tol < 1:
            raise ValueError("the marginal rule's tolerance is a mean |R·1 - 1|: expected 0 < tol < 1")
        return tol

    @property
    def rule(self) -> str:
        """The stop rule in force ('auto' resolved)."""
        return resolve_rule(self.stop, self.cost_scaling)

    def plan_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of sinkhorn.sinkhorn_plan these settings stand for."""
        return dict(eps=self.eps, max_iter=self.max_iter, stop=self.stop, tol=self.tol,
                    cost_scaling=self.cost_scaling, compiled=self.compiled)


class EvaluationConfig(Strict):
    """Evaluations beyond top-1 (alignmixup.evaluation): calibration and L-inf robustness, val and test splits.

    Budgets are L-inf in [0, 1] pixel space, one budget for FGSM and PGD so their accuracies compare.
    """

    kinds: list[Literal["calibration", "fgsm", "pgd"]] = Field(
        default_factory=list, description="evaluations to run on each evaluated split; empty: none"
    )
    images: int | None = Field(1000, ge=1, description="evaluate the first N images of a split; None: all of it")
    eps: float | None = Field(
        None, gt=0, le=1, description="L-inf budget of FGSM and PGD in [0, 1] pixels; None: 8/255 to 32x32, else 4/255"
    )
    pgd_steps: int = Field(10, ge=1, le=1000)
    pgd_step_size: float | None = Field(None, gt=0, le=1, description="PGD step in [0, 1] pixels; None: eps / 4")
    pgd_random_start: bool = Field(True, description="PGD starts from a uniform draw in the eps ball")
    bins: int = Field(15, ge=2, le=1000, description="equal-width confidence bins (k/bins, (k+1)/bins] of ECE and OE")
    epochs: list[int] = Field(
        default_factory=list, description="1-based epochs evaluated on the val split besides the last one"
    )

    def runs_at(self, epoch: int, final: bool) -> bool:
        """Whether the val split is evaluated after 1-based `epoch` (always after the final one)."""
        return bool(self.kinds) and (final or epoch in self.epochs)

    @model_validator(mode="after")
    def _check(self) -> EvaluationConfig:
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds: repeated kind in {self.kinds}")
        bad = [e for e in self.epochs if e < 1]
        if bad:
            raise ValueError(f"epochs: epochs are 1-based, got {bad[0]}")
        if len(set(self.epochs)) != len(self.epochs):
            raise ValueError(f"epochs: repeated epoch in {self.epochs}")
        self.epochs = sorted(self.epochs)
        return self


class ScheduleSegment(Strict):
    """Hyperparameters in force from the 1-based epoch `from_epoch` on (a field left out keeps its earlier value).

    `lr` is the base learning rate from that epoch on; the run's lr schedule (step or cosine) still applies to it,
    as it does to a trial whose lr a population-based sweep mutated.
    """

    from_epoch: int = Field(ge=1)
    alpha: float | None = Field(None, gt=0)
    eps: float | None = Field(None, gt=0, le=1e3, description="Sinkhorn's entropic regularisation")
    lr: float | None = Field(None, gt=0)
    mix_layers: list[int] | None = None


class InForce(Strict):
    """The schedulable hyperparameters in force during one epoch."""

    alpha: float
    eps: float
    lr: float
    mix_layers: list[int]


class TrainConfig(Strict):
    """Everything one run needs; the defaults are the release's CIFAR recipe on the digits set."""

    dataset: Dataset = "digits"
    data_dir: Path | None = None
    subset: int | None = Field(None, ge=1, description="ImageNet: keep the first N images of each class")
    network: str = "preactresnet18"
    width: float = Field(1.0, gt=0, le=8)
    epochs: int = Field(2000, ge=1)
    batch_size: int = Field(128, ge=2, description="global batch; each of W ranks takes batch_size // W")
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    nesterov: bool = False
    lr_schedule: Literal["step", "cosine"] = "step"
    milestones: list[int] = Field(default_factory=lambda: [500, 1000, 1500])
    gammas: list[float] = Field(default_factory=lambda: [0.1, 0.1, 0.1])
    method: Method = "alignmixup"
    alpha: float = Field(2.0, gt=0)
    mix_layers: list[int] | None = Field(None, description="None: the release's {0, last stage}")
    sinkhorn: SinkhornConfig = Field(default_factory=SinkhornConfig)
    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig, description="calibration and robustness on the val split (at the end and "
        "at evaluation.epochs) and on the test split (at the end)"
    )
    val_fraction: float = Field(
        0.1, ge=0, lt=1,
        description="validation split carved (seeded) from the training set; 0: the release's protocol (the whole "
                    "training set, no validation, the best epoch chosen by test accuracy)",
    )
    seed: int = Field(8492, ge=0, description="initial weights, shuffles, augmentation and mixing draws")
    split_seed: int | None = Field(None, ge=0, description="the validation split's seed; None: seed (a sweep fixes "
                                   "it so that every trial, whatever its seed, is selected on the same images)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = Field(True, description="the model in channels_last memory format (the batches always are)")
    compile: bool = False
    eval_test: Literal["never", "end", "every"] = Field(
        "end", description="test top-1 never, at the end, or every epoch (val_fraction 0: every, which it defaults to)"
    )
    loader_workers: int = Field(8, ge=0, description="DataLoader workers (ImageNet only)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads")
    schedule: list[ScheduleSegment] = Field(
        default_factory=list,
        description="hyperparameters that change during the run (e.g. a population-based sweep's best schedule): "
                    "segments in ascending from_epoch; before the first one the fields above are in force",
    )

    @property
    def validation_seed(self) -> int:
        """The seed of the validation split (and of the digits set's measured normalisation)."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def selects_on(self) -> Literal["val", "test"]:
        """The split whose top-1 picks the best epoch: validation, or test under the release's protocol."""
        return "val" if self.val_fraction > 0 else "test"

    @property
    def num_stages(self) -> int:
        """Residual stages of the network: valid mixing layers are 0..num_stages."""
        return MODELS[self.network].num_stages

    def in_force(self, epoch: int) -> InForce:
        """alpha, eps, base lr and mixing layers in force during the 1-based `epoch` (the schedule applied)."""
        values = {"alpha": self.alpha, "eps": self.sinkhorn.eps, "lr": self.lr, "mix_layers": self.mix_layers}
        for segment in self.schedule:
            if segment.from_epoch > epoch:
                break
            values.update(segment.model_dump(exclude={"from_epoch"}, exclude_none=True))
        return InForce(**values)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.network not in MODELS:
            raise ValueError(f"network: expected one of {', '.join(MODELS)} (got {self.network!r})")
        if len(self.gammas) != len(self.milestones):
            raise ValueError(f"gammas: need one per milestone ({len(self.milestones)}), got {len(self.gammas)}")
        if self.mix_layers is None:
            self.mix_layers = [0, self.num_stages]
        if not self.mix_layers:
            raise ValueError("mix_layers: must not be empty")
        bad = [k for k in self.mix_layers if not 0 <= k <= self.num_stages]
        if bad:
            raise ValueError(
                f"mix_layers: {self.network} has layers 0..{self.num_stages} (0 = input), got {bad[0]}"
            )
        if len(set(self.mix_layers)) != len(self.mix_layers):
            raise ValueError(f"mix_layers: repeated layer in {self.mix_layers}")
        if self.dataset != "digits" and self.data_dir is None:
            raise ValueError(f"data_dir: required for dataset {self.dataset}")
        if self.subset is not None and self.dataset != "imagenet":
            raise ValueError("subset: only applies to dataset imagenet")
        if self.val_fraction == 0:
            if "eval_test" not in self.model_fields_set:
                self.eval_test = "every"
            elif self.eval_test != "every":
                raise ValueError(
                    f"eval_test: with val_fraction 0 the test split picks the best epoch, so it must be 'every' "
                    f"(got {self.eval_test!r})"
                )
        self._check_schedule()
        return self

    def _check_schedule(self) -> None:
        """Segments ascend within the run, and each one's values are valid as the fields they replace."""
        previous = 0
        for i, segment in enumerate(self.schedule):
            if segment.from_epoch <= previous:
                raise ValueError(f"schedule.{i}.from_epoch: segments must ascend (got {segment.from_epoch} after "
                                 f"{previous})")
            if segment.from_epoch > self.epochs:
                raise ValueError(f"schedule.{i}.from_epoch: beyond the run's {self.epochs} epochs (got "
                                 f"{segment.from_epoch})")
            previous = segment.from_epoch
            if segment.mix_layers is not None:
                replaced = self.model_dump(exclude={"schedule"})
                replaced["mix_layers"] = segment.mix_layers
                try:
                    TrainConfig.model_validate(replaced)
                except ValidationError as exc:
                    raise ValueError(f"schedule.{i}.{error_line(exc)}") from None
