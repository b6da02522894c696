"""Validated configuration of one training run (pydantic), and the one-line error messages of every config.

`Strict` is the base of every configuration model in the project (unknown keys are errors) and `error_line`
turns pydantic's report into the one line a command prints before it exits with code 2.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alignmixup.models import MODELS
from alignmixup.sinkhorn import CostScaling, StopRule

Method = Literal["alignmixup", "mixup", "manifold", "erm"]
Dataset = Literal["digits", "cifar10", "cifar100", "tinyimagenet", "imagenet"]
DATASETS: tuple[str, ...] = get_args(Dataset)
KEYED = re.compile(r"^[A-Za-z_][\w.]*: ")  # a validator message that starts with the key it is about


def error_line(exc: ValidationError, prefix: str = "", skip: frozenset[str] = frozenset()) -> str:
    """The first pydantic error as one line `key.path: message (got value)`.

    `prefix` goes in front of the key path; `skip` drops path parts that are not keys the user wrote (the tag
    pydantic adds for each member of a discriminated union).
    """
    err = exc.errors()[0]
    loc = [prefix] if prefix else []
    loc += [str(p) for p in err["loc"] if p not in skip]
    msg = err["msg"].removeprefix("Value error, ")
    if KEYED.match(msg) or not loc:  # a model-level check names its key itself
        return ".".join([*loc, msg])
    got = err.get("input")
    shown = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {got!r})"
    return f"{'.'.join(loc)}: {msg}{shown}"


class Strict(BaseModel):
    """A configuration model in which an unknown key is an error."""

    model_config = ConfigDict(extra="forbid")


class SinkhornConfig(Strict):
    """Sinkhorn settings of aligned mixing; the defaults are the release's."""

    eps: float = Field(0.1, gt=0, le=1e3, description="entropic regularisation")
    max_iter: int = Field(100, ge=1, le=10_000)
    stop: StopRule = "release"
    tol: float = Field(0.1, gt=0, description="release rule: batch-mean L1 change of the row potential")
    cost_scaling: CostScaling = "none"


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
