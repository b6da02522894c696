"""`alignmixup-train`: one training run from the command line, with the release's flags accepted.

Writes <output-dir>/metrics.csv (one row per epoch), checkpoint.pt (every epoch, atomically) and
best.pt (the best-validation weights). Bad input exits with code 2 and one line naming the argument.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from alignmixup.config import TrainConfig, config_error_line
from alignmixup.presets import PRESETS

# config field -> the flag that sets it, for error messages
FLAGS = {
    "dataset": "--dataset", "data_dir": "--data-dir", "network": "--network", "width": "--width",
    "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "momentum": "--momentum",
    "weight_decay": "--weight-decay", "lr_schedule": "--lr-schedule", "milestones": "--schedule",
    "gammas": "--gammas", "method": "--method", "alpha": "--alpha", "mix_layers": "--mix-layers",
    "sinkhorn.eps": "--eps", "sinkhorn.max_iter": "--sinkhorn-iters", "sinkhorn.stop": "--sinkhorn-stop",
    "sinkhorn.tol": "--sinkhorn-tol", "sinkhorn.cost_scaling": "--cost-scaling", "val_fraction": "--val-fraction",
    "seed": "--seed", "device": "--device", "eval_test": "--eval-test", "threads": "--threads",
    "subset": "--subset", "loader_workers": "--workers",
}
SINKHORN_ARGS = {"eps": "eps", "sinkhorn_iters": "max_iter", "sinkhorn_stop": "stop", "sinkhorn_tol": "tol",
                 "cost_scaling": "cost_scaling"}
NETWORK_ALIASES = {"resnet": "preactresnet18", "wideresnet": "wrn16_8"}  # the release's --network values
NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "tinyimagenet": 200, "imagenet": 1000}


class UsageError(Exception):
    """Bad command-line input: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _layers(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers such as 0,4 (got {text!r})") from None


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False (got {text!r})")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="alignmixup-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    S = argparse.SUPPRESS
    p.add_argument("--preset", choices=sorted(PRESETS), help="a published configuration; other flags override it")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=["digits", "cifar10", "cifar100", "tinyimagenet", "imagenet"])
    g.add_argument("--data-dir", "--data_dir", dest="data_dir", type=Path)
    g.add_argument("--train_dir", type=Path, help=S)  # the release's Tiny-ImageNet flags
    g.add_argument("--val_dir", type=Path, help=S)
    g.add_argument("--subset", type=int, help="ImageNet: first N images per class (the release's 260)")
    g.add_argument("--mini_imagenet", type=_bool, help=S)
    g.add_argument("--val-fraction", type=float, help="validation split carved from the training set")
    g.add_argument("--workers", "--loader-workers", dest="loader_workers", type=int, help="ImageNet DataLoader workers")
    g.add_argument("--num-classes", "--num_classes", dest="num_classes", type=int, help="checked against the data set")
    g = p.add_argument_group("network")
    g.add_argument("--network", help="preactresnet18 | wrn16_8 | resnet50 (the release's resnet | wideresnet too)")
    g.add_argument("--width", type=float, help="channel width multiplier")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int)
    g.add_argument("--lr", "--lr_", dest="lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", "--decay", dest="weight_decay", type=float)
    g.add_argument("--nesterov", action="store_true", default=None)
    g.add_argument("--lr-schedule", choices=["step", "cosine"])
    g.add_argument("--schedule", "--milestones", dest="milestones", type=int, nargs="+", help="step epochs")
    g.add_argument("--gammas", type=float, nargs="+", help="lr factor at each milestone")
    g = p.add_argument_group("mixing")
    g.add_argument("--method", choices=["alignmixup", "mixup", "manifold", "erm"])
    g.add_argument("--alpha", type=float, help="lam ~ Beta(alpha, alpha)")
    g.add_argument("--mix-layers", type=_layers, help="e.g. 0,4 (0 = input, k = after stage k)")
    g.add_argument("--eps", type=float, help="Sinkhorn entropic regularisation")
    g.add_argument("--sinkhorn-iters", type=int)
    g.add_argument("--sinkhorn-stop", choices=["release", "fixed"])
    g.add_argument("--sinkhorn-tol", type=float)
    g.add_argument("--cost-scaling", choices=["none", "mean"])
    g = p.add_argument_group("run")
    g.add_argument("--seed", "--manualSeed", dest="seed", type=int)
    g.add_argument("--output-dir", "--save_dir", dest="output_dir", type=Path)
    g.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue from PATH (default: <output-dir>/checkpoint.pt)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"])
    g.add_argument("--ngpu", type=int, help=S)
    g.add_argument("--eval-test", choices=["never", "end", "every"])
    g.add_argument("--threads", type=int)
    g.add_argument("--no-amp", dest="amp", action="store_false", default=None)
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None)
    g.add_argument("--compile", action="store_true", default=None)
    return p


def _tiny_dir(train_dir: Path, val_dir: Path | None) -> Path:
    root = train_dir.parent
    if val_dir is not None and val_dir.parent != root:
        raise UsageError(f"--val_dir: expected {root / 'val'} beside --train_dir (got {val_dir})")
    return root


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- preset <- explicit flags, validated; raises UsageError naming the flag."""
    values: dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {}
    skip = {"preset", "train_dir", "val_dir", "mini_imagenet", "num_classes", "output_dir", "resume", "ngpu",
            *SINKHORN_ARGS}
    values.update({k: v for k, v in vars(args).items() if v is not None and k not in skip})
    sink = {SINKHORN_ARGS[k]: getattr(args, k) for k in SINKHORN_ARGS if getattr(args, k) is not None}
    if sink:
        values["sinkhorn"] = sink
    if args.train_dir is not None:
        values["data_dir"] = _tiny_dir(args.train_dir, args.val_dir)
        values.setdefault("dataset", "tinyimagenet")
    if args.mini_imagenet is False:
        values.pop("subset", None)
    if args.ngpu == 0:
        values["device"] = "cpu"
    values["network"] = _network(values.get("network"), values.get("dataset", "digits"))
    try:
        cfg = TrainConfig(**values)
    except ValidationError as exc:
        line = config_error_line(exc)
        field = line.split(":", 1)[0]
        raise UsageError(f"argument {FLAGS.get(field, field)}: {line.split(':', 1)[1].strip()}") from None
    if args.num_classes is not None and args.num_classes != NUM_CLASSES[cfg.dataset]:
        raise UsageError(f"argument --num_classes: {cfg.dataset} has {NUM_CLASSES[cfg.dataset]} classes "
                         f"(got {args.num_classes})")
    return cfg


def _network(name: str | None, dataset: str) -> str:
    if name is None:
        return "resnet50" if dataset == "imagenet" else "preactresnet18"
    if name == "resnet" and dataset == "imagenet":
        return "resnet50"
    return NETWORK_ALIASES.get(name, name)


def _default_output_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.dataset}-{cfg.network}-{cfg.method}-s{cfg.seed}"


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite metrics.csv from the whole history (atomically, so a crash never leaves half a file)."""
    from alignmixup.checkpoint import atomic_write

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda fh: fh.write(buf.getvalue().encode()))


def _epoch_line(m: Any, epochs: int) -> str:
    test = f"  test_acc {m.test_acc:6.2f}" if m.test_acc is not None else ""
    return (f"epoch {m.epoch:>4}/{epochs}  lr {m.lr:.4g}  train_loss {m.train_loss:.4f}  val_loss {m.val_loss:.4f}"
            f"  val_acc {m.val_acc:6.2f}  val_top5 {m.val_top5:6.2f}{test}  best_val {m.best_val_acc:6.2f}"
            f"  {m.epoch_time_s:6.1f}s  {m.images_per_s:8.0f} img/s")


def run(args: argparse.Namespace) -> int:
    from alignmixup.checkpoint import CheckpointError, atomic_write
    from alignmixup.config import ConfigError
    from alignmixup.data import DataError
    from alignmixup.trainer import Trainer

    cfg = config_from_args(args)
    out = args.output_dir or _default_output_dir(cfg)
    ckpt = out / "checkpoint.pt"
    resume = None if args.resume is None else Path(args.resume) if args.resume else ckpt
    if resume is None and ckpt.exists():
        raise UsageError(f"argument --output-dir: {out} already holds a run (checkpoint.pt); "
                         "pass --resume to continue it or choose another directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"argument --output-dir: cannot create {out} ({exc.strerror})") from None
    try:
        trainer = Trainer(cfg)
        if resume is not None:
            trainer.load_checkpoint(resume)
            print(f"resumed from {resume} at epoch {trainer.epoch}", flush=True)
    except (ConfigError, DataError) as exc:
        raise UsageError(str(exc)) from None
    except CheckpointError as exc:
        raise UsageError(f"argument --resume: {exc}") from None

    def on_epoch(m: Any) -> None:
        trainer.save_checkpoint(ckpt)
        if trainer.improved:
            import torch

            atomic_write(out / "best.pt", lambda fh: torch.save(
                {"format": "alignmixup-weights-v1", "model": trainer.best_state, "epoch": m.epoch,
                 "val_acc": m.val_acc, "config": cfg.model_dump(mode="json")}, fh))
        write_metrics_csv(out / "metrics.csv", [h.as_dict() for h in trainer.history])
        print(_epoch_line(m, cfg.epochs), flush=True)

    print(f"training {cfg.network} (width {cfg.width}) on {cfg.dataset} with {cfg.method} on {trainer.device}; "
          f"output in {out}", flush=True)
    history = trainer.fit(on_epoch)
    if history:
        last = history[-1]
        print(f"done: best val_acc {last.best_val_acc:.2f}, final val_acc {last.val_acc:.2f}"
              + (f", test_acc of best-val weights {last.best_val_test_acc:.2f}" if last.best_val_test_acc is not None
                 else "") + (f", best test_acc {last.best_test_acc:.2f}" if last.best_test_acc is not None else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, validate, train. Returns the exit code."""
    try:
        return run(build_parser().parse_args(argv))
    except UsageError as exc:
        print(f"alignmixup-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alignmixup-train: interrupted; resume with --resume", file=sys.stderr)
        return 130

