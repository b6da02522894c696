"""The GPU memory estimate (alignmixup.memory, what the sweeps' preflight packs trials by) against a real epoch.

For every shipped GPU preset, the trial configuration with the largest estimated peak across its search space is
trained for one epoch by alignmixup's Trainer, mixing at the worst layer on every batch (mix_layers reduced to
that layer), on a synthetic data set of the preset's image size in the real on-disk format; the epoch's
EpochMetrics.gpu_mem_peak_gb (torch.cuda.max_memory_allocated) is compared with the estimate's tensors (its
data part recomputed for the synthetic set's size), and the process's whole footprint on the card
(torch.cuda.mem_get_info) with the estimate's peak. The last rows measure what the allowance stands for: the CUDA
context and the caching allocator's slack.

    python -m benchmarks.memory_check --device cuda                 # on a GPU: about a minute
    python -m benchmarks.memory_check --device cpu --small          # the code path only, no GPU figures
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from alignmixup import memory
from alignmixup.config import TrainConfig
from alignmixup.data import TINY_CACHE
from alignmixup.trainer import Trainer
from benchmarks._machine import add_common_args, device_name, print_table, save, setup
from tune_jobs import preflight
from tune_jobs.config import validate
from tune_jobs.presets import load_raw, preset_names


def synthetic(dataset: str, root: Path, images: int) -> tuple[Path, int, int]:
    """A data directory of `dataset` in its reader's format with about `images` training images: (dir, train, test)."""
    from tests.helpers.data_writers import write_cifar, write_imagefolder

    test = max(images // 10, 16)
    if dataset in ("cifar10", "cifar100"):
        classes = 10 if dataset == "cifar10" else 100
        per_batch = images // 5 if classes == 10 else images
        written = write_cifar(root, classes=classes, per_batch=per_batch, test=test)
        return root, len(written["train_y"]), len(written["test_y"])
    if dataset == "tinyimagenet":  # the reader's decoded cache: no JPEGs to write and decode
        rng = np.random.default_rng(0)
        arrays = {"train_x": rng.integers(0, 256, (images, 64, 64, 3), dtype=np.uint8),
                  "train_y": rng.integers(0, 200, images), "test_x": rng.integers(0, 256, (test, 64, 64, 3),
                                                                                   dtype=np.uint8),
                  "test_y": rng.integers(0, 200, test)}
        root.mkdir(parents=True, exist_ok=True)
        (root / "wnids.txt").write_text("")
        np.savez(root / TINY_CACHE, **arrays)
        return root, images, test
    # ImageNet streams through a DataLoader: a few batches' worth of small JPEGs (RandomResizedCrop makes 224s)
    write_imagefolder(root, classes=2, per_class=min(images, 256) // 2, val=4)
    return root, 0, 0


def measure(name: str, device: torch.device, images: int, small: bool, work: Path) -> dict[str, object]:
    """One preset's worst trial: its estimate and one epoch's measured peak."""
    start = time.monotonic()
    sweep = validate(load_raw(name)[0])
    estimate, cfg = preflight.estimate_memory(sweep)
    layer = estimate.mix_layer
    data_dir, n_train, n_test = synthetic(cfg.dataset, work / name, images)
    changes: dict[str, object] = {
        "data_dir": data_dir, "epochs": 1, "eval_test": "never", "batch_size": estimate.per_worker_batch,
        "mix_layers": [layer] if layer is not None else cfg.mix_layers, "device": device.type, "loader_workers": 4,
    }
    if small:  # the CPU dry run: the code path at a size a CPU trains in seconds
        changes.update(batch_size=16, width=0.25, loader_workers=0,
                       sinkhorn={**cfg.sinkhorn.model_dump(), "max_iter": 3})
    run = TrainConfig.model_validate({**cfg.model_dump(), **changes})
    expected = memory.estimate_peak_gb(run, 1)
    data_gb = memory.resident_data_bytes(run.dataset, n_train, n_test) / memory.BYTES_PER_GB \
        if run.dataset in memory.SPLIT_SIZES else 0.0
    expected_allocated = expected.allocated_gb - expected.data_gb + data_gb
    row: dict[str, object] = {
        "preset": name, "mix_layer": layer, "batch": run.batch_size, "width": run.width,
        "preset_peak_gb": estimate.peak_gb, "preset_allocated_gb": estimate.allocated_gb,
        "expected_allocated_gb": expected_allocated, "expected_peak_gb": expected_allocated + expected.allowance_gb,
        **{f"estimate_{k}": v for k, v in expected.parts().items()},
    }
    trainer = Trainer(run, device=device)
    metrics = trainer.train_epoch()
    row["measured_gpu_mem_peak_gb"] = metrics.gpu_mem_peak_gb
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        row["reserved_peak_gb"] = torch.cuda.max_memory_reserved(device) / memory.BYTES_PER_GB
        row["device_used_gb"] = (total - free) / memory.BYTES_PER_GB  # the process's footprint (a dedicated GPU)
        row["context_gb"] = row["device_used_gb"] - torch.cuda.memory_reserved(device) / memory.BYTES_PER_GB
        row["slack_vs_allocated"] = row["reserved_peak_gb"] / metrics.gpu_mem_peak_gb - 1
        row["measured_over_expected"] = metrics.gpu_mem_peak_gb / expected_allocated
    row["seconds"] = time.monotonic() - start
    del trainer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return row


def main(argv: list[str] | None = None) -> None:
    """Measure every shipped GPU preset's worst trial, print the table and save the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5120, help="synthetic training images per preset")
    parser.add_argument("--presets", nargs="+", default=None, help="default: every shipped GPU preset")
    parser.add_argument("--small", action="store_true", help="batch 16, width 0.25: the code path only (CPU)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    device = setup(args)
    names = args.presets or [n for n in preset_names() if validate(load_raw(n)[0]).scaling.use_gpu]
    with tempfile.TemporaryDirectory(prefix="alignmixup-memory-") as work:
        rows = [measure(n, device, args.images, args.small, Path(work)) for n in names]
    columns = ["preset", "mix_layer", "batch", "preset_peak_gb", "expected_allocated_gb", "measured_gpu_mem_peak_gb",
               "measured_over_expected", "reserved_peak_gb", "slack_vs_allocated", "context_gb", "seconds"]
    print_table(rows, columns)
    notes = [
        "each preset's trial with the largest estimated peak over its search space, mixing at its worst layer on "
        "every batch, one epoch on a synthetic set of the preset's image size (the estimate's data part "
        "recomputed for that size); expected_allocated_gb is comparable with measured_gpu_mem_peak_gb",
        f"allowance constants: CUDA context {memory.CUDA_CONTEXT_GB} GB, cuDNN workspace "
        f"{memory.CUDNN_WORKSPACE_GB} GB, allocator slack {memory.ALLOCATOR_SLACK:.0%}: device_used_gb (the "
        "process's footprint) minus what the allocator holds is context_gb; slack_vs_allocated the allocator's slack",
        f"measured on {device_name(device)}",
    ]
    save("memory_check", device, args, rows, notes)


if __name__ == "__main__":
    main()
