"""Training data path: the device-resident pipeline vs a release-style torchvision DataLoader, images/s.

Both produce the same thing from a CIFAR-like uint8 array data set (N, 32, 32, 3): shuffled batches of 128,
per-sample random crop 32 with 4-pixel zero padding, horizontal flip, normalisation, as float NCHW on the
training device. The release's way: PIL images through RandomCrop + RandomHorizontalFlip + ToTensor +
Normalize in DataLoader workers, then a copy to the device (pinned memory, non-blocking, on CUDA). Ours:
alignmixup.data.DevicePipeline (the whole uint8 set on the device, one gather and one fused affine a batch).
A round is one pass (epoch) of each; the DataLoader's worker start-up is inside its pass, as in the release.

    python -m benchmarks.data --images 10000 --workers 2 --rounds 3
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from alignmixup.data import CIFAR_MEAN, CIFAR_STD, SPECS, DevicePipeline, Normalization
from benchmarks._machine import add_common_args, interleaved, paired_ratio, print_table, save, setup, stats, sync


class ArrayImages(Dataset):
    """uint8 images (N, H, W, C) and labels served as PIL images through a torchvision transform."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform: Callable) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def release_loader(x: np.ndarray, y: np.ndarray, batch: int, workers: int, device: torch.device) -> DataLoader:
    """The release's CIFAR training loader: PIL transforms in `workers` processes, shuffled, last batch dropped."""
    import torchvision.transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    return DataLoader(ArrayImages(x, y, transform), batch_size=batch, shuffle=True, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=True)


def loader_pass(loader: DataLoader, device: torch.device) -> Callable[[], None]:
    """One epoch of the DataLoader, each batch copied to the device as the trainer would take it."""

    def run() -> None:
        for xb, yb in loader:
            xb.to(device, non_blocking=True, memory_format=torch.channels_last)
            yb.to(device, non_blocking=True)
        sync(device)

    return run


def device_pass(pipe: DevicePipeline, batch: int, device: torch.device) -> Callable[[], None]:
    """One epoch of the device-resident pipeline over a fresh permutation."""

    def run() -> None:
        order = torch.randperm(len(pipe), device=device, generator=pipe.gen)
        for _ in pipe.batches(order, batch, train=True, drop_last=True):
            pass
        sync(device)

    return run


def main(argv: list[str] | None = None) -> None:
    """Time both pipelines interleaved, print the table and save the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000, help="data set size (CIFAR's training set: 50000)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    add_common_args(parser)
    parser.set_defaults(rounds=3)
    args = parser.parse_args(argv)
    device = setup(args)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, args.images)
    pipe = DevicePipeline(x, y, SPECS["cifar10"], Normalization(CIFAR_MEAN, CIFAR_STD), device)
    pipe.reseed(0)
    fns = {"release_dataloader": loader_pass(release_loader(x, y, args.batch, args.workers, device), device),
           "device_pipeline": device_pass(pipe, args.batch, device)}
    times = interleaved(fns, device, args.rounds, warmup=1)
    per_pass = args.images - args.images % args.batch
    rows = [{
        "pipeline": name, "median_pass_s": stats(times[name])["median"],
        "images_per_s": per_pass / stats(times[name])["median"],
        "speedup_vs_dataloader": paired_ratio(times["release_dataloader"], times[name]),
        "pass_times_s": times[name],
    } for name in fns]
    print_table(rows, ["pipeline", "median_pass_s", "images_per_s", "speedup_vs_dataloader"])
    notes = [
        f"{args.rounds} interleaved rounds of one pass each over {args.images} random uint8 32x32x3 images "
        f"(batches of {args.batch}, last partial batch dropped) after one untimed pass each",
        f"release_dataloader: {args.workers} workers, PIL RandomCrop(32, padding=4) + flip + ToTensor + Normalize, "
        "non-persistent workers (start-up inside the pass), pinned memory and non_blocking copies on CUDA",
    ]
    save("data", device, args, rows, notes)


if __name__ == "__main__":
    main()
