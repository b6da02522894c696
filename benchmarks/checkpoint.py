"""What a trial's checkpoint costs, piece by piece and through Ray Train (synchronous vs asynchronous upload).

The state is a PreActResNet-18 Trainer at --width (full width: 11.2M parameters) after one SGD step (so the
optimiser holds its momentum buffers), as tune_jobs.worker writes it:
- save: rank 0's blocking work before ray.train.report: Trainer.save_checkpoint(with_best=False) and meta.json
  into a fresh temporary folder;
- save_with_best: the same with the best weights inside (what every epoch used to write);
- upload: copying that folder into the storage directory (pyarrow's copy_files, what Ray Train's upload does for
  local storage): paid inside report with SYNC, in a background thread with ASYNC;
- best_weights: one best-weights file (safetensors, atomic write): paid at a checkpoint only when the best changed.
Timed side by side in --rounds interleaved rounds. With --ray, one Ray Train run (1 CPU worker)
reports every "epoch" of --epoch-s seconds (a sleep: a GPU epoch leaves the host mostly idle), the three modes
taking turns epoch by epoch: no checkpoint, save + ray.train.report(checkpoint_upload_mode=SYNC), save +
report(ASYNC); the figure is how long that blocks training.

    python -m benchmarks.checkpoint --rounds 5 --ray            # this CPU: host-side costs
    python -m benchmarks.checkpoint --device cuda --rounds 10 --ray
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._machine import add_common_args, interleaved, print_table, save, setup, stats
from benchmarks._workloads import fixed_batches, make_trainer, synthetic_cifar

MB = 1e6


def trained_state(device: torch.device, width: float):
    """A Trainer on synthetic CIFAR after one step, with best weights set: the state a trial checkpoints."""
    trainer = make_trainer(synthetic_cifar(1280), "erm", device, width=width, batch_size=128)
    x, y = fixed_batches(trainer, 1)[0]
    trainer.step(x, y)
    trainer.best_state = {k: v.detach().to("cpu", copy=True) for k, v in trainer.model_without_ddp.state_dict().items()}
    return trainer


def pieces(trainer, root: Path) -> dict[str, Any]:
    """The timed candidates, each a zero-argument callable, and the folder sizes they write."""
    import pyarrow.fs as pafs

    from alignmixup.weights import weights_bytes
    from tune_jobs import storage
    from tune_jobs.worker import CHECKPOINT_FILE, META_FILE

    storage_dir = root / "storage"
    storage_dir.mkdir()
    made: list[Path] = []

    def write(with_best: bool) -> Path:
        folder = Path(tempfile.mkdtemp(prefix="bench-checkpoint-", dir=root))
        trainer.save_checkpoint(folder / CHECKPOINT_FILE, with_best=with_best)
        (folder / META_FILE).write_text(json.dumps({"epoch": 1, "best_weights": "x"}))
        made.append(folder)
        return folder

    source = write(False)

    def upload() -> None:
        target = storage_dir / f"checkpoint_{len(made)}"
        target.mkdir()  # as Ray creates the checkpoint's directory, then copies into it
        pafs.copy_files(str(source), str(target), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=pafs.LocalFileSystem())
        shutil.rmtree(target)

    def best() -> None:
        data = weights_bytes(trainer.best_state, trainer.cfg, epoch=1)
        storage.write(storage_dir / "best.safetensors", lambda fh: fh.write(data))

    def cleanup() -> None:
        for folder in made[1:]:
            shutil.rmtree(folder, ignore_errors=True)
        del made[1:]

    sizes = {"checkpoint_mb": (source / CHECKPOINT_FILE).stat().st_size / MB}
    with_best = write(True)
    sizes["checkpoint_with_best_mb"] = (with_best / CHECKPOINT_FILE).stat().st_size / MB
    best()
    sizes["best_weights_mb"] = (storage_dir / "best.safetensors").stat().st_size / MB
    fns = {"save": lambda: (write(False), cleanup()), "save_with_best": lambda: (write(True), cleanup()),
           "upload": upload, "best_weights": best}
    return {"fns": fns, "sizes": sizes}


MODES = ("none", "sync", "async")


def _ray_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: epochs of config["epoch_s"] seconds, each reported, the modes taking turns epoch by
    epoch (side by side): no checkpoint, a checkpoint uploaded synchronously, one uploaded asynchronously."""
    import ray.train

    from tune_jobs.worker import CHECKPOINT_FILE

    trainer = trained_state(torch.device(config["device"]), config["width"])
    blocked: dict[str, list[float]] = {mode: [] for mode in MODES}
    for epoch in range(len(MODES) * config["rounds"]):
        mode = MODES[epoch % len(MODES)]
        time.sleep(config["epoch_s"])
        start = time.perf_counter()
        if mode == "none":
            ray.train.report({"epoch": epoch})
        else:
            folder = tempfile.mkdtemp(prefix="bench-ray-checkpoint-")  # outlives report (ASYNC uploads it later)
            trainer.save_checkpoint(Path(folder) / CHECKPOINT_FILE, with_best=False)
            upload = ray.train.CheckpointUploadMode.ASYNC if mode == "async" else ray.train.CheckpointUploadMode.SYNC
            ray.train.report({"epoch": epoch}, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_upload_mode=upload, delete_local_checkpoint_after_upload=True)
        blocked[mode].append(time.perf_counter() - start)
    Path(config["out"]).write_text(json.dumps(blocked))


def through_ray(args: argparse.Namespace, device: torch.device, root: Path) -> list[dict[str, Any]]:
    """Per mode, how long an epoch's report (with the checkpoint's save) blocked the worker; the first round, which
    warms up, left out."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False)
    out = root / "ray.json"
    try:
        TorchTrainer(
            _ray_loop,
            train_loop_config={"rounds": args.ray_rounds + 1, "epoch_s": args.epoch_s, "width": args.width,
                               "device": device.type, "out": str(out)},
            scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=device.type == "cuda"),
            run_config=ray.train.RunConfig(name="bench", storage_path=str(root / "ray"),
                                           checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        ).fit()
    finally:
        ray.shutdown()
    blocked = json.loads(out.read_text())
    rows = []
    for mode in MODES:
        figures = stats(blocked[mode][1:])
        rows.append({"mode": mode, "epochs": figures.pop("n"), **{f"report_{k}_s": v for k, v in figures.items()}})
    return rows


def main(argv: list[str] | None = None) -> None:
    """Time the pieces (and, with --ray, Ray's two upload modes), print the tables and save the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--ray", action="store_true", help="also report through Ray Train, SYNC vs ASYNC")
    parser.add_argument("--ray-rounds", type=int, default=5, help="epochs per mode in the --ray run")
    parser.add_argument("--epoch-s", type=float, default=2.0, help="the simulated epoch of the --ray runs")
    add_common_args(parser)
    args = parser.parse_args(argv)
    device = setup(args)
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp:
        root = Path(tmp)
        trainer = trained_state(device, args.width)
        made = pieces(trainer, root)
        times = interleaved(made["fns"], device, args.rounds)
        rows = [{"piece": name, **{f"{k}_s": v for k, v in stats(t).items() if k != "n"}} for name, t in times.items()]
        print_table(rows)
        med = {name: statistics.median(t) for name, t in times.items()}
        per_checkpoint = {
            "sync_s": med["save"] + med["upload"], "async_blocking_s": med["save"],
            "best_weights_s": med["best_weights"], "before_s": med["save_with_best"] + med["upload"],
        }
        print("per checkpoint: " + "  ".join(f"{k}={v:.3g}" for k, v in per_checkpoint.items()))
        print("sizes: " + "  ".join(f"{k}={v:.1f}" for k, v in made["sizes"].items()))
        del trainer
        ray_rows = through_ray(args, device, root) if args.ray else []
        if ray_rows:
            print_table(ray_rows)
    notes = [
        f"PreActResNet-18 width {args.width} with SGD momentum buffers; sync = save + upload, async = save (the "
        "upload runs in Ray's background thread), before = every epoch with the best weights inside, synchronous",
        "upload: pyarrow copy_files to a local storage directory (an object store adds its network time to SYNC "
        "only); best_weights: paid at a checkpoint only when the best validation accuracy changed",
        f"--ray: 1 Ray Train worker, an epoch = sleep {args.epoch_s} s, the modes in turn epoch by epoch; blocking "
        "time = save + report, medians over --ray-rounds epochs per mode (the first round left out)",
    ]
    save("checkpoint", device, args, {"pieces": rows, "sizes": made["sizes"], "per_checkpoint": per_checkpoint,
                                      "ray": ray_rows}, notes)


if __name__ == "__main__":
    main()
