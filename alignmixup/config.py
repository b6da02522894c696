"""Validated configuration of one training run (pydantic), and one-line error messages for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from alignmixup.models import MODELS
from alignmixup.sinkhorn import CostScaling, StopRule, resolve_rule

Method = Literal["alignmixup", "mixup", "manifold", "erm"]
DATASET_NAMES = ("digits", "cifar10", "cifar100", "tinyimagenet", "imagenet")


class ConfigError(ValueError):
    """A configuration value is wrong; the message is one line that names the field."""


def config_error_line(exc: ValidationError, prefix: str = "") -> str:
    """The first pydantic error as `field.path: message (got value)`."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a model-level check: its message starts with the field's name
        return f"{prefix}{msg}"
    got = err.get("input")
    shown = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {got!r})"
    return f"{prefix}{loc}: {msg}{shown}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SinkhornConfig(_Strict):
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


class TrainConfig(_Strict):
    """Everything one run needs; the defaults are the release's CIFAR recipe on the digits set."""

    dataset: Literal["digits", "cifar10", "cifar100", "tinyimagenet", "imagenet"] = "digits"
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
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(8492, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = Field(True, description="the model in channels_last memory format (the batches always are)")
    compile: bool = False
    eval_test: Literal["never", "end", "every"] = "end"
    loader_workers: int = Field(8, ge=0, description="DataLoader workers (ImageNet only)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads")

    @property
    def num_stages(self) -> int:
        """Residual stages of the network: valid mixing layers are 0..num_stages."""
        return MODELS[self.network].num_stages

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
        return self


def make_train_config(**values: object) -> TrainConfig:
    """Build a TrainConfig, turning pydantic's report into a one-line ConfigError."""
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise ConfigError(config_error_line(exc)) from None
