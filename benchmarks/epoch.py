"""End-to-end training epochs of PreActResNet-18 AlignMixup on CIFAR-sized data through alignmixup's Trainer.

A synthetic CIFAR-10 directory (official pickle format, random pixels) of `--images` training images is read
by the trainer's own reader into its device-resident pipeline; `Trainer.fit` runs `--epochs` epochs and each
epoch's training-loop images/s (EpochMetrics.images_per_s, validation excluded) is reported with the device's
name. The first epoch pays for cudnn autotuning (and compilation with --compile): steady state is the last.
Target on an H100: at least 25,000 images/s.

    python -m benchmarks.epoch --images 50000 --epochs 3            # a GPU
    python -m benchmarks.epoch --images 1280 --epochs 2 --threads 1 # this CPU: just a report
"""

from __future__ import annotations

import argparse
import time

from alignmixup.config import SinkhornConfig
from benchmarks._machine import add_common_args, device_name, print_table, save, setup
from benchmarks._workloads import make_trainer, synthetic_cifar

H100_TARGET = 25_000.0


def main(argv: list[str] | None = None) -> None:
    """Train the epochs, print one row per epoch and save the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000, help="synthetic training-set size (CIFAR: 50000)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--method", default="alignmixup", choices=["alignmixup", "mixup", "manifold", "erm"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (TrainConfig.compile)")
    parser.add_argument("--sinkhorn-compiled", action="store_true", help="SinkhornConfig(compiled=True)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    device = setup(args)
    t0 = time.perf_counter()
    data = synthetic_cifar(args.images)
    tr = make_trainer(data, args.method, device, width=args.width, batch_size=args.batch, epochs=args.epochs,
                      compile_model=args.compile, sinkhorn=SinkhornConfig(compiled=args.sinkhorn_compiled))
    setup_s = time.perf_counter() - t0
    walls: list[float] = []
    last = time.perf_counter()

    def on_epoch(_: object) -> None:
        nonlocal last
        now = time.perf_counter()
        walls.append(now - last)
        last = now

    history = tr.fit(on_epoch=on_epoch)
    name = device_name(device)
    rows = [{"device": name, "epoch": m.epoch, "train_images": m.train_samples_global, "epoch_time_s": m.epoch_time_s,
             "images_per_s": m.images_per_s, "wall_with_val_s": wall} for m, wall in zip(history, walls, strict=True)]
    print_table(rows)
    steady = rows[-1]["images_per_s"]
    summary = {"device": name, "steady_images_per_s": steady, "best_images_per_s": max(r["images_per_s"] for r in rows),
               "setup_s": setup_s, "epochs": rows,
               "h100_target_images_per_s": H100_TARGET,
               "meets_h100_target": steady >= H100_TARGET if "H100" in name else None}
    print(f"{name}: {steady:,.0f} images/s in the last epoch (setup {setup_s:.1f} s)")
    notes = [
        f"PreActResNet-18 width {args.width}, {args.method}, batch {args.batch}, the release's mixing layers "
        "{0, 4}; val_fraction 0.1 (the trainer's validation runs after each epoch, outside epoch_time_s)",
        "bf16 autocast, channels_last and cudnn.benchmark on CUDA as the Trainer sets them; --compile adds "
        "torch.compile of the model",
    ]
    save("epoch", device, args, summary, notes)


if __name__ == "__main__":
    main()
