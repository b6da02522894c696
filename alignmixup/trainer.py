"""The training loop: explicit, one epoch at a time, resumable bit-for-bit, DDP-ready.

Under an initialised torch.distributed process group the model is wrapped in DDP, every rank trains
on its own shard and draws its own mixing pairs within its batch; without one it is a plain loop.
Every random stream of an epoch (shuffle, crops, mixing draws) is seeded from (seed, epoch, rank), so
a run resumed at an epoch boundary draws exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from alignmixup import checkpoint
from alignmixup.checkpoint import CheckpointError
from alignmixup.config import ConfigError, TrainConfig
from alignmixup.data import load_splits, shard
from alignmixup.mixing import BatchMix, Mixer
from alignmixup.models import build_model


@dataclass
class EpochMetrics:
    """What one epoch recorded (accuracies in percent, reduced over all ranks)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_acc: float
    val_top5: float
    test_acc: float | None
    best_val_acc: float
    best_test_acc: float | None
    best_val_test_acc: float | None
    lr: float
    epoch_time_s: float
    images_per_s: float
    train_samples: int
    train_samples_global: int
    world_size: int
    rank: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of a 0-based epoch: the release's step schedule, or cosine to zero."""
    if cfg.lr_schedule == "cosine":
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    lr = cfg.lr
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


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class Trainer:
    """Builds data, model, optimiser and mixer from a TrainConfig and trains epoch by epoch."""

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
        self.data = load_splits(cfg, self.device, self.rank)
        self.local_batch = cfg.batch_size // self.world_size
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = build_model(cfg.network, self.data.num_classes, cfg.width, self.data.channels).to(
            self.device, memory_format=self.memory_format
        )
        net: torch.nn.Module = self.model
        if distributed:
            net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device] if cuda else None)
        self.net = torch.compile(net) if cfg.compile else net
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
        self.mixer = Mixer(cfg.method, cfg.alpha, cfg.mix_layers, cfg.sinkhorn, self.device)
        self.autocast = torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=cuda and cfg.amp)
        self.epoch = 0
        self.history: list[EpochMetrics] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.improved = False

    # ------------------------------------------------------------------ data

    def train_indices(self, epoch: int) -> torch.Tensor:
        """The training-set indices this rank trains on in 0-based `epoch` (disjoint across ranks)."""
        return shard(self.data.train_idx, epoch, self.cfg.seed, self.rank, self.world_size)

    # ------------------------------------------------------------------ loop

    def fit(self, on_epoch: Callable[[EpochMetrics], None] | None = None) -> list[EpochMetrics]:
        """Train from the current epoch to cfg.epochs, calling on_epoch(metrics) after each one."""
        while self.epoch < self.cfg.epochs:
            metrics = self.train_epoch()
            if on_epoch is not None:
                on_epoch(metrics)
        return self.history

    def train_epoch(self) -> EpochMetrics:
        """One epoch of training, then validation (and test when asked); returns its metrics."""
        cfg, e = self.cfg, self.epoch
        lr = lr_at(cfg, e)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.mixer.seed(_seed(cfg.seed, e, self.rank, 1))
        pipe = self.data.train
        if hasattr(pipe, "gen"):
            pipe.gen.manual_seed(_seed(cfg.seed, e, self.rank, 2))
        self.net.train()
        loss_sum = torch.zeros((), device=self.device)
        steps = samples = 0
        start = time.perf_counter()
        for x, y in pipe.batches(self.train_indices(e), self.local_batch, train=True):
            loss_sum += self.step(x, y)[0]
            steps += 1
            samples += len(y)
        train_loss = loss_sum.item() / max(steps, 1)
        elapsed = time.perf_counter() - start
        global_samples = int(self._all_sum(torch.tensor([float(samples)], device=self.device))[0])
        self.epoch += 1
        val_loss, val_acc, val_top5 = self.evaluate("val")
        best_val = max(val_acc, self.history[-1].best_val_acc if self.history else -1.0)
        self.improved = val_acc > (self.history[-1].best_val_acc if self.history else -1.0)
        if self.improved:
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        final = self.epoch == cfg.epochs
        test_acc = best_val_test = None
        if cfg.eval_test == "every" or (cfg.eval_test == "end" and final):
            test_acc = self.evaluate("test")[1]
        if cfg.eval_test != "never" and final:
            best_val_test = self._test_best_weights()
        prev_best_test = self.history[-1].best_test_acc if self.history else None
        best_test = max((a for a in (test_acc, prev_best_test) if a is not None), default=None)
        metrics = EpochMetrics(
            epoch=self.epoch, train_loss=train_loss, val_loss=val_loss, val_acc=val_acc, val_top5=val_top5,
            test_acc=test_acc, best_val_acc=best_val, best_test_acc=best_test, best_val_test_acc=best_val_test,
            lr=lr, epoch_time_s=elapsed, images_per_s=global_samples / max(elapsed, 1e-9), train_samples=samples,
            train_samples_global=global_samples, world_size=self.world_size, rank=self.rank,
        )
        self.history.append(metrics)
        return metrics

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, BatchMix]:
        """One optimisation step on a batch: mixing draw, forward, mixed loss, backward, SGD update.

        Returns the detached loss (left on the device: no host sync) and the batch's mixing draw.
        """
        mix = self.mixer(x, y)
        with self.autocast:
            logits = self.net(x, mix)
        loss = mix.loss(logits)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), mix

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[float, float, float]:
        """(loss, top-1 %, top-5 %) on the whole 'val' or 'test' split, reduced over ranks."""
        self.model.eval()  # the bare module: ranks may run different numbers of eval batches
        totals = torch.zeros(4, device=self.device, dtype=torch.float64)
        batch = max(self.local_batch, 256)
        for x, y in self.data.eval_batches(split, batch, self.rank, self.world_size):
            with self.autocast:
                logits = self.model(x).float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top == y[:, None]
            totals += torch.stack([
                F.cross_entropy(logits, y, reduction="sum").double(), hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(), torch.tensor(float(len(y)), device=self.device, dtype=torch.float64),
            ])
        loss, top1, top5, n = self._all_sum(totals).tolist()
        n = max(n, 1.0)
        return loss / n, 100.0 * top1 / n, 100.0 * top5 / n

    def _test_best_weights(self) -> float | None:
        """Test top-1 of the best-validation weights (the current ones are put back afterwards)."""
        if self.best_state is None:
            return None
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.best_state)
        acc = self.evaluate("test")[1]
        self.model.load_state_dict(current)
        return acc

    def _all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(t)
        return t

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimiser, epoch, history, best weights, RNG states."""
        return {
            "config": self.cfg.model_dump(mode="json"),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best_model": self.best_state,
            "history": [m.as_dict() for m in self.history],
            "rng": checkpoint.rng_state(),
        }

    def save_checkpoint(self, path: Path) -> None:
        """Write the resumable state atomically (call on rank 0 only)."""
        checkpoint.save(path, self.state_dict())

    def load_checkpoint(self, path: Path) -> None:
        """Restore a state written by save_checkpoint; raises CheckpointError if it does not fit."""
        state = checkpoint.load(path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.epoch = int(state["epoch"])
            self.history = [EpochMetrics(**m) for m in state["history"]]
            self.best_state = state["best_model"]
            checkpoint.set_rng_state(state["rng"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: does not fit this run ({str(exc).splitlines()[0]})") from None
