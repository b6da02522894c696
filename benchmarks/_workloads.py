"""Shared workloads: a synthetic CIFAR-10 directory, Trainers built on it, and one training step.

The directory is written once per size in the real on-disk format (tests/helpers/data_writers.write_cifar), so the
benchmarks go through the trainer's own reader, device-resident pipeline, model, mixer and optimiser.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from alignmixup.config import Method, SinkhornConfig, TrainConfig
from alignmixup.trainer import Trainer


def synthetic_cifar(images: int, root: Path | None = None) -> Path:
    """A CIFAR-10 python-pickle directory with `images` random training images (a multiple of 5), reused."""
    from tests.helpers.data_writers import write_cifar

    root = root or Path(tempfile.gettempdir()) / f"alignmixup-bench-cifar10-{images}"
    done = root / "complete"
    if not done.exists():
        write_cifar(root, classes=10, per_batch=max(1, images // 5), test=min(1000, images), seed=0)
        done.write_text("ok\n")
    return root


def make_trainer(
    data_dir: Path, method: Method, device: torch.device, *, width: float = 1.0, batch_size: int = 128,
    epochs: int = 1, mix_layers: list[int] | None = None, compile_model: bool = False, val_fraction: float = 0.1,
    threads: int | None = None, sinkhorn: SinkhornConfig | None = None,
) -> Trainer:
    """A PreActResNet-18 Trainer on the synthetic CIFAR-10 directory (same seed, so the same initial weights);
    `sinkhorn` None: the release's settings."""
    cfg = TrainConfig(
        dataset="cifar10", data_dir=data_dir, network="preactresnet18", width=width, batch_size=batch_size,
        epochs=epochs, method=method, mix_layers=mix_layers, compile=compile_model,
        eval_test="never" if val_fraction > 0 else "every",  # without a validation split the test split selects
        val_fraction=val_fraction, device=device.type, threads=threads,
        sinkhorn=sinkhorn or SinkhornConfig(),
    )
    return Trainer(cfg, device=device)


def fixed_batches(tr: Trainer, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` augmented training batches drawn once from the trainer's own pipeline (cycled by the steps)."""
    idx = tr.train_indices(0)
    b = tr.local_batch
    if len(idx) < count * b:
        raise SystemExit(f"synthetic data set too small: {len(idx)} training images for {count} batches of {b}")
    return [tr.data.train.batch(idx[i * b:(i + 1) * b].to(tr.device), train=True) for i in range(count)]
