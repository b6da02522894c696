"""The training loop: explicit, one epoch at a time, resumable bit-for-bit, DDP-ready.

Under an initialised torch.distributed process group the model is wrapped in DDP, every rank trains
on its own shard and draws its own mixing pairs within its batch; without one it is a plain loop.
Every random stream of an epoch (shuffle, crops, mixing draws) is seeded from (seed, epoch, rank), so
a run resumed at an epoch boundary draws exactly what the uninterrupted run would have drawn.

Two protocols pick the best epoch (TrainConfig.selects_on): a validation split carved from the training
set (tuning), or the release's: the whole training set, the test split evaluated every epoch and the best
test accuracy reported beside the final one.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from alignmixup import checkpoint
from alignmixup.checkpoint import CheckpointError
from alignmixup.config import InForce, TrainConfig
from alignmixup.console import ConfigError
from alignmixup.data import load_splits, shard
from alignmixup.evaluation import evaluation_totals, finalize, metric_names, rank_share
from alignmixup.mixing import BatchMix, Mixer
from alignmixup.models import StagedNet, build_model
from alignmixup.names import SINKHORN_COLUMNS
from alignmixup.sinkhorn import SinkhornStats

BYTES_PER_GB = 1e9


@dataclass
class EpochMetrics:
    """What one epoch recorded (accuracies in percent, reduced over all ranks; None: not measured this epoch).

    val_*: None under the release's protocol (no validation split). test_acc: when the test split was evaluated
    (every epoch, or the last). best_test_acc: the best test_acc so far (the release's reported number).
    best_val_test_acc: at the last epoch, test top-1 of the best-validation weights. improved: this epoch set a
    new best on the selecting split, so the best weights are this epoch's. alpha, eps: the mixing hyperparameters in
    force this epoch (TrainConfig.schedule may change them). sinkhorn_*: how far the plans of the epoch's aligned
    batches converged, over all ranks (AlignMixup only).
    """

    epoch: int
    train_loss: float
    val_loss: float | None
    val_acc: float | None
    val_top5: float | None
    test_acc: float | None
    best_val_acc: float | None
    best_test_acc: float | None
    best_val_test_acc: float | None
    improved: bool
    lr: float
    alpha: float
    eps: float
    epoch_time_s: float
    images_per_s: float
    train_samples: int
    train_samples_global: int
    world_size: int
    rank: int
    gpu_mem_peak_gb: float | None = None
    sinkhorn_iters: float | None = None  # mean Sinkhorn iterations per aligned batch (None: no batch aligned)
    sinkhorn_marginal_err: float | None = None  # mean row marginal error |R·1 - 1| of the aligned batches' plans
    evaluations: dict[str, float | None] = field(default_factory=dict)  # None: not evaluated this epoch

    def as_dict(self) -> dict[str, Any]:
        """Flat metrics: every field, the evaluations (val_ece, test_fgsm_acc, ...) as their own keys."""
        out = asdict(self)
        out.update(out.pop("evaluations"))
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EpochMetrics:
        """Inverse of as_dict (keys that are not fields are the evaluations)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names},
                   evaluations={k: v for k, v in values.items() if k not in names})


def metric_columns(cfg: TrainConfig) -> list[str]:
    """The metrics a run of `cfg` reports, in EpochMetrics' order: the columns of its metrics table.

    Metrics that the run's protocol never measures are left out (no validation columns under the release's
    protocol, no test columns with eval_test never, no GPU memory on a CPU).
    """
    skip = {"evaluations"}
    if cfg.selects_on == "test":
        skip |= {"val_loss", "val_acc", "val_top5", "best_val_acc", "best_val_test_acc"}
    if cfg.eval_test == "never":
        skip |= {"test_acc", "best_test_acc", "best_val_test_acc"}
    if cfg.device == "cpu":
        skip.add("gpu_mem_peak_gb")
    if cfg.method != "alignmixup":  # eps means nothing without aligned mixing, alpha nothing without mixing
        skip |= {"eps", *SINKHORN_COLUMNS}
    if cfg.method == "erm":
        skip.add("alpha")
    return [f.name for f in fields(EpochMetrics) if f.name not in skip] + evaluation_columns(cfg)


def evaluation_columns(cfg: TrainConfig) -> list[str]:
    """The metrics of cfg.evaluation: val_<name> where a validation split exists, test_<name> unless no test."""
    splits = [s for s, on in (("val", cfg.selects_on == "val"), ("test", cfg.eval_test != "never")) if on]
    return [f"{split}_{name}" for split in splits for name in metric_names(cfg.evaluation)]


def every_epoch_metrics(cfg: TrainConfig) -> list[str]:
    """The metrics a run of `cfg` reports with a value at every epoch (what an early-stopping scheduler may use)."""
    sometimes = {"best_val_test_acc", "gpu_mem_peak_gb", *SINKHORN_COLUMNS,
                 *evaluation_columns(cfg)}
    if cfg.eval_test != "every":
        sometimes |= {"test_acc", "best_test_acc"}
    return [c for c in metric_columns(cfg) if c not in sometimes]


def lr_at(cfg: TrainConfig, epoch: int, base: float | None = None) -> float:
    """Learning rate of a 0-based epoch: the release's step schedule, or cosine to zero, of `base` (cfg.lr)."""
    base = cfg.lr if base is None else base
    if cfg.lr_schedule == "cosine":
        return 0.5 * base * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    lr = base
    for gamma, milestone in zip(cfg.gammas, cfg.milestones, strict=True):
        if epoch < milestone:
            break
        lr *= gamma
    return lr


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when there is one; asking for CUDA without one is a configuration error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def derive_seed(*parts: int) -> int:
    """A 32-bit seed mixed from integers (numpy's SeedSequence): distinct parts give independent streams."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _best(new: float | None, old: float | None) -> float | None:
    return max((a for a in (new, old) if a is not None), default=None)


class Trainer:
    """Builds data, model, optimiser and mixer from a TrainConfig and trains epoch by epoch.

    `model` is what trains (the DDP wrapper under a process group, compiled when asked); `model_without_ddp`
    is the bare network: evaluation, checkpoints and the best weights use it.
    """

    def __init__(self, cfg: TrainConfig, device: torch.device | None = None) -> None:
        self.cfg = cfg
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if distributed else 0
        self.world_size = dist.get_world_size() if distributed else 1
        if cfg.batch_size % self.world_size or cfg.batch_size // self.world_size < 2:
            raise ConfigError(f"batch_size: {cfg.batch_size} does not split into {self.world_size} ranks of >= 2")
        self.device = device if device is not None else resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.data = load_splits(cfg, self.device)
        self.local_batch = cfg.batch_size // self.world_size
        # one process keeps the last partial batch (the release does); DDP ranks need equal step counts
        self.drop_last = self.world_size > 1
        if len(self.data.train_idx) // self.world_size < self.local_batch:
            raise ConfigError(f"batch_size: {cfg.batch_size} is larger than the training split "
                              f"({len(self.data.train_idx)} images over {self.world_size} ranks)")
        if cfg.selects_on == "val" and len(self.data.val_idx) == 0:
            raise ConfigError(f"val_fraction: {cfg.val_fraction} of {len(self.data.train_idx)} training images "
                              "leaves an empty validation split (use 0 for the release's protocol)")
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model_without_ddp: StagedNet = build_model(
            cfg.network, self.data.num_classes, cfg.width, self.data.channels
        ).to(self.device, memory_format=self.memory_format)
        model: torch.nn.Module = self.model_without_ddp
        if distributed:
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device] if cuda else None)
        self.model = torch.compile(model) if cfg.compile else model
        self.optimizer = torch.optim.SGD(
            self.model_without_ddp.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
        self.mixing = cfg.in_force(1)
        self.mixer = self._mixer(self.mixing)
        self.autocast = torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=cuda and cfg.amp)
        self.epoch = 0
        self.history: list[EpochMetrics] = []
        self.best_state: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ data

    def train_indices(self, epoch: int) -> torch.Tensor:
        """The training-set indices this rank trains on in 0-based `epoch` (disjoint across ranks)."""
        return shard(self.data.train_idx, epoch, self.cfg.seed, self.rank, self.world_size)

    # ------------------------------------------------------------------ loop

    def fit(self, on_epoch: Callable[[EpochMetrics], None] | None = None,
            on_batch: Callable[[int], None] | None = None) -> list[EpochMetrics]:
        """Train from the current epoch to cfg.epochs, calling on_epoch(metrics) after each one (and on_batch)."""
        while self.epoch < self.cfg.epochs:
            metrics = self.train_epoch(on_batch)
            if on_epoch is not None:
                on_epoch(metrics)
        return self.history

    def epoch_images(self) -> int:
        """How many images this rank trains on per epoch."""
        shard_size = len(self.data.train_idx) // self.world_size
        return shard_size - shard_size % self.local_batch if self.drop_last else shard_size

    def train_epoch(self, on_batch: Callable[[int], None] | None = None) -> EpochMetrics:
        """One epoch of training, then the evaluations its protocol asks for; returns its metrics.

        on_batch(images) is called after each step (a progress bar; it must not read device values).
        """
        cfg, e = self.cfg, self.epoch
        hp = cfg.in_force(e + 1)
        if hp != self.mixing:  # the schedule changed alpha, eps or the mixing layers
            self.mixing, self.mixer = hp, self._mixer(hp)
        lr = lr_at(cfg, e, base=hp.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.mixer.seed(derive_seed(cfg.seed, e, self.rank, 1))
        self.data.train.reseed(derive_seed(cfg.seed, e, self.rank, 2))
        self.mixer.stats.reset()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.model.train()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        steps = samples = 0
        start = time.perf_counter()
        batches = self.data.train.batches(self.train_indices(e), self.local_batch, train=True,
                                          drop_last=self.drop_last)
        for x, y in batches:
            loss_sum += self.step(x, y)[0]
            steps += 1
            samples += len(y)
            if on_batch is not None:
                on_batch(len(y))
        elapsed = time.perf_counter() - start
        totals = self._all_sum(torch.cat([
            torch.stack([loss_sum, loss_sum.new_tensor(float(steps)), loss_sum.new_tensor(float(samples))]),
            self.mixer.stats.totals().to(loss_sum.device),
        ]))
        loss_total, step_total, sample_total = totals[:3].tolist()
        sinkhorn_iters, sinkhorn_err = SinkhornStats.means(totals[3:])
        self.epoch += 1
        self._sync_buffers()
        metrics = self._evaluate_epoch(
            train_loss=loss_total / max(step_total, 1.0), lr=lr, epoch_time_s=elapsed,
            images_per_s=sample_total / max(elapsed, 1e-9), train_samples=samples,
            train_samples_global=int(sample_total), alpha=hp.alpha, eps=hp.eps, sinkhorn_iters=sinkhorn_iters,
            sinkhorn_marginal_err=sinkhorn_err,
        )
        self.history.append(metrics)
        return metrics

    def _evaluate_epoch(self, **train: Any) -> EpochMetrics:
        """Validation and test as the protocol asks, the best-so-far bookkeeping and the best weights."""
        cfg, prev = self.cfg, (self.history[-1] if self.history else None)
        final = self.epoch == cfg.epochs
        val_loss = val_acc = val_top5 = test_acc = best_val_test = None
        if cfg.selects_on == "val":
            val_loss, val_acc, val_top5 = self.evaluate("val")
        if cfg.eval_test == "every" or (cfg.eval_test == "end" and final):
            test_acc = self.evaluate("test")[1]
        best_val = _best(val_acc, prev and prev.best_val_acc)
        best_test = _best(test_acc, prev and prev.best_test_acc)
        selected, best_so_far = (val_acc, prev and prev.best_val_acc) if cfg.selects_on == "val" else (
            test_acc, prev and prev.best_test_acc)
        improved = selected is not None and (best_so_far is None or selected > best_so_far)
        if improved:
            weights = self.model_without_ddp.state_dict()
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
        evaluations: dict[str, float | None] = dict.fromkeys(evaluation_columns(cfg))  # every epoch has every key
        if cfg.selects_on == "val" and cfg.evaluation.runs_at(self.epoch, final):
            evaluations |= self.evaluate_beyond_top1("val")
        if final and cfg.eval_test != "never":
            with self._best_weights():
                if cfg.selects_on == "val":
                    best_val_test = self.evaluate("test")[1]
                if cfg.evaluation.kinds:
                    evaluations |= self.evaluate_beyond_top1("test")
        gpu_mem = torch.cuda.max_memory_allocated(self.device) / BYTES_PER_GB if self.device.type == "cuda" else None
        return EpochMetrics(
            epoch=self.epoch, val_loss=val_loss, val_acc=val_acc, val_top5=val_top5, test_acc=test_acc,
            best_val_acc=best_val, best_test_acc=best_test, best_val_test_acc=best_val_test, improved=improved,
            world_size=self.world_size, rank=self.rank, gpu_mem_peak_gb=gpu_mem, evaluations=evaluations, **train,
        )

    def evaluate_beyond_top1(self, split: str) -> dict[str, float]:
        """cfg.evaluation's calibration and robustness metrics on the first evaluation.images of a split, over all
        ranks: {"<split>_ece": ..., "<split>_fgsm_acc": ...} (alignmixup.evaluation)."""
        ev = self.cfg.evaluation
        batches = self.data.eval_batches(split, max(self.local_batch, 256), self.rank, self.world_size)
        totals = evaluation_totals(
            self.model_without_ddp, batches, self.data.norm, ev, self.autocast,
            limit=rank_share(ev.images, self.rank, self.world_size),
            seed=derive_seed(self.cfg.seed, self.epoch, self.rank, 3 if split == "val" else 4),
        )
        return {f"{split}_{name}": value for name, value in finalize(self._all_sum(totals), ev).items()}

    def _mixer(self, hp: InForce) -> Mixer:
        """A mixer drawing with the given alpha, Sinkhorn eps and mixing layers (reseeded at every epoch)."""
        sinkhorn = self.cfg.sinkhorn.model_copy(update={"eps": hp.eps})
        return Mixer(self.cfg.method, hp.alpha, hp.mix_layers, sinkhorn, self.device)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, BatchMix]:
        """One optimisation step on a batch: mixing draw, forward, mixed loss, backward, SGD update.

        Returns the detached loss (left on the device: no host sync) and the batch's mixing draw.
        """
        mix = self.mixer(x, y)
        with self.autocast:
            logits = self.model(x, mix)
        loss = mix.loss(logits)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), mix

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[float, float, float]:
        """(loss, top-1 %, top-5 %) on the whole 'val' or 'test' split, reduced over ranks."""
        self.model_without_ddp.eval()  # the bare module: ranks may run different numbers of eval batches
        totals = torch.zeros(4, device=self.device, dtype=torch.float64)
        batch = max(self.local_batch, 256)
        for x, y in self.data.eval_batches(split, batch, self.rank, self.world_size):
            with self.autocast:
                logits = self.model_without_ddp(x).float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top == y[:, None]
            totals += torch.stack([
                F.cross_entropy(logits, y, reduction="sum").double(), hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(), torch.tensor(float(len(y)), device=self.device, dtype=torch.float64),
            ])
        loss, top1, top5, n = self._all_sum(totals).tolist()
        return loss / n, 100.0 * top1 / n, 100.0 * top5 / n

    @contextmanager
    def _best_weights(self) -> Iterator[None]:
        """The best epoch's weights in the model for the block (the current ones are put back afterwards)."""
        if self.best_state is None:
            yield
            return
        current = {k: v.detach().clone() for k, v in self.model_without_ddp.state_dict().items()}
        self.model_without_ddp.load_state_dict(self.best_state)
        try:
            yield
        finally:
            self.model_without_ddp.load_state_dict(current)

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics) before evaluation.

        Each rank's last training forward updates its running statistics with its own batch, so without this the
        ranks would evaluate slightly different models and rank 0's checkpoint would not be the evaluated one.
        """
        if self.world_size > 1:
            for buffer in self.model_without_ddp.buffers():
                dist.broadcast(buffer, src=0)

    def _all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(t)
        return t

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self, with_best: bool = True) -> dict[str, Any]:
        """Everything needed to resume: weights, optimiser, epoch, history, RNG states (and the best weights)."""
        return {
            "config": self.cfg.model_dump(mode="json"),
            "epoch": self.epoch,
            "model": self.model_without_ddp.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best_model": self.best_state if with_best else None,
            "history": [m.as_dict() for m in self.history],
            "rng": checkpoint.rng_state(),
        }

    def save_checkpoint(self, path: Path, with_best: bool = True) -> None:
        """Write the resumable state atomically (call on rank 0 only)."""
        checkpoint.save(path, self.state_dict(with_best))

    def load_checkpoint(self, path: Path) -> None:
        """Restore a state written by save_checkpoint; raises CheckpointError if it does not fit this run."""
        state = checkpoint.load(path)
        checkpoint.check_compatible(path, state, self.cfg)
        try:
            self.model_without_ddp.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.epoch = int(state["epoch"])
            self.history = [EpochMetrics.from_dict(m) for m in state["history"]]
            if state["best_model"] is not None:
                self.best_state = state["best_model"]
            checkpoint.set_rng_state(state["rng"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: does not fit this run ({str(exc).splitlines()[0]})") from None
