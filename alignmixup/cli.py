"""`alignmixup-train`: one training run from the command line, with the release's own flags accepted.

Settings come from a recipe (--preset, else the published recipe of the data set and network, else the quick
digits recipe) or a whole TrainConfig file (--config: JSON or YAML, such as the train_config.json that
`alignmixup-tune best --export` writes, with a population-based sweep's schedule), then the flags given.
Writes <output-dir>/metrics.csv (one row per epoch), checkpoint.pt (every epoch, atomically; everything
needed to resume) and best.pt (the best epoch's weights: best validation accuracy, or best test accuracy under
the release's protocol, --val-fraction 0). `--resume` continues a run with the settings it was started with.
`--tracking` also logs the run to TensorBoard, MLflow and/or W&B (alignmixup.tracking; tracking.json keeps their
run ids, which a resume continues). `--evaluate CHECKPOINT` evaluates a saved model without training. Bad input
exits with code 2 and one line naming the flag.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from alignmixup.config import DATASETS, TrainConfig, error_line
from alignmixup.console import ConfigError, Parser, add_version, run_command
from alignmixup.presets import RECIPES, recipe_for
from alignmixup.sinkhorn import CostScaling, StopRule
from alignmixup.tracking import BEST_WEIGHTS_TAG, command_line_trackers, tracking_flag

PROG = "alignmixup-train"
# config field -> the flag that sets it, for error messages
FLAGS = {
    "dataset": "--dataset", "data_dir": "--data-dir", "network": "--network", "width": "--width",
    "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "momentum": "--momentum",
    "weight_decay": "--weight-decay", "lr_schedule": "--lr-schedule", "milestones": "--schedule",
    "gammas": "--gammas", "method": "--method", "alpha": "--alpha", "mix_layers": "--mix-layers",
    "sinkhorn.eps": "--eps", "sinkhorn.max_iter": "--sinkhorn-max-iter", "sinkhorn.stop": "--sinkhorn-stop",
    "sinkhorn.tol": "--sinkhorn-tol", "sinkhorn.cost_scaling": "--cost-scaling",
    "sinkhorn.compiled": "--sinkhorn-compiled", "val_fraction": "--val-fraction",
    "seed": "--seed", "device": "--device", "eval_test": "--eval-test", "threads": "--threads",
    "subset": "--subset", "loader_workers": "--workers", "amp": "--amp", "channels_last": "--channels-last",
    "compile": "--compile", "nesterov": "--nesterov", "split_seed": "--split-seed",
}
SINKHORN_ARGS = {"eps": "eps", "sinkhorn_max_iter": "max_iter", "sinkhorn_stop": "stop", "sinkhorn_tol": "tol",
                 "cost_scaling": "cost_scaling", "sinkhorn_compiled": "compiled"}
NOT_CONFIG = {"preset", "config", "train_dir", "val_dir", "mini_imagenet", "num_classes", "output_dir", "resume",
              "ngpu", "tracking", "evaluate", "evaluations", "evaluation_images", *SINKHORN_ARGS}
# flags that may accompany --evaluate: where the data is and what runs it, and which evaluations; nothing else
EVALUATE_MAY_SET = frozenset({"data_dir", "device", "threads", "loader_workers", "amp", "channels_last"})
EVALUATIONS = ("calibration", "fgsm", "pgd")
# flags that may differ from a resumed run's settings: where and how it runs, and how long; never what it computes
RESUME_MAY_CHANGE = frozenset({"epochs", "device", "threads", "data_dir", "loader_workers"})
NETWORK_ALIASES = {"resnet": "preactresnet18", "wideresnet": "wrn16_8"}  # the release's --network values
RELEASE_SUBSET = 260  # the release's --subset default (its mini-ImageNet: about 20% of each class)


def _layers(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers such as 0,4 (got {text!r})") from None


def _kinds(text: str) -> list[str]:
    kinds = [k for k in text.replace(" ", "").split(",") if k]
    bad = [k for k in kinds if k not in EVALUATIONS]
    if bad:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(EVALUATIONS)} (got {bad[0]!r})")
    return kinds


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False (got {text!r})")


def build_parser() -> argparse.ArgumentParser:
    """The command line; every setting flag defaults to None so that only the flags given override the recipe."""
    p = Parser(prog=PROG, description=__doc__)
    add_version(p)
    S = argparse.SUPPRESS
    d = TrainConfig.model_fields
    p.add_argument("--preset", choices=sorted(RECIPES), help="a recipe (the six published ones, or the quick "
                   "digits run); other flags override it")
    p.add_argument("--config", type=Path, metavar="FILE", help="a TrainConfig as JSON or YAML (e.g. the "
                   "train_config.json of `alignmixup-tune best --export`, with its schedule); other flags override it")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, help="default: digits (or what the release's flags imply)")
    g.add_argument("--data-dir", "--data_dir", dest="data_dir", type=Path)
    g.add_argument("--train_dir", type=Path, help=S)  # the release's Tiny-ImageNet flags
    g.add_argument("--val_dir", type=Path, help=S)
    g.add_argument("--subset", type=int, help="ImageNet: first N images per class (the release's 260)")
    g.add_argument("--mini_imagenet", type=_bool, help=S)
    g.add_argument("--val-fraction", type=float, help="validation split carved from the training set; 0 = the "
                   f"release's protocol (whole training set, best epoch by test accuracy) (default: "
                   f"{d['val_fraction'].default}; 0 in the published recipes)")
    g.add_argument("--workers", "--loader-workers", dest="loader_workers", type=int,
                   help=f"ImageNet DataLoader workers (default: {d['loader_workers'].default})")
    g.add_argument("--num-classes", "--num_classes", dest="num_classes", type=int, help="checked against the data set")
    g = p.add_argument_group("network")
    g.add_argument("--network", help="preactresnet18 (the release's) | preactresnet18_textbook | wrn16_8 | "
                   "resnet50 (the release's resnet | wideresnet too)")
    g.add_argument("--width", type=float, help="channel width multiplier (default: 1.0; digits recipe: 0.25)")
    g = p.add_argument_group("optimisation (defaults: the recipe's)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, help="global batch")
    g.add_argument("--lr", "--lr_", dest="lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", "--decay", dest="weight_decay", type=float)
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum")
    g.add_argument("--lr-schedule", choices=["step", "cosine"])
    g.add_argument("--schedule", "--milestones", dest="milestones", type=int, nargs="+", help="step epochs")
    g.add_argument("--gammas", type=float, nargs="+", help="lr factor at each milestone")
    g = p.add_argument_group("mixing (defaults: the release's)")
    g.add_argument("--method", choices=["alignmixup", "mixup", "manifold", "erm"])
    g.add_argument("--alpha", type=float, help=f"lam ~ Beta(alpha, alpha) (default: {d['alpha'].default})")
    g.add_argument("--mix-layers", type=_layers, help="e.g. 0,4 (0 = input, k = after stage k; default: 0,last)")
    g.add_argument("--eps", type=float, help="Sinkhorn entropic regularisation (default: 0.1)")
    g.add_argument("--cost-scaling", choices=get_args(CostScaling),
                   help="none: the release (absolute eps); mean: each pair's cost over its mean (scale-free eps)")
    g.add_argument("--sinkhorn-stop", choices=get_args(StopRule),
                   help="auto (default): release with --cost-scaling none, marginal with mean")
    g.add_argument("--sinkhorn-tol", type=float, help="default: the rule's own (release 0.1, marginal 0.01)")
    g.add_argument("--sinkhorn-max-iter", type=int, help="default: the rule's own (100; marginal 1000)")
    g.add_argument("--sinkhorn-compiled", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile'd Sinkhorn iterations (pays on CUDA)")
    g = p.add_argument_group("run")
    g.add_argument("--seed", "--manualSeed", dest="seed", type=int, help=f"(default: {d['seed'].default})")
    g.add_argument("--output-dir", "--save_dir", dest="output_dir", type=Path,
                   help="default: runs/<dataset>-<network>-<method>-s<seed>")
    g.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue a run with its stored settings from PATH (default: <output-dir>/checkpoint.pt)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    g.add_argument("--ngpu", type=int, help=S)
    g.add_argument("--eval-test", choices=["never", "end", "every"],
                   help="test top-1 never, at the end, or every epoch (default: end; every with --val-fraction 0)")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--split-seed", type=int, help="the validation split's seed (default: --seed)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast on CUDA "
                   "(default: on)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="the model in channels_last memory format (default: on)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
    g = p.add_argument_group("evaluation of a saved model (no training)")
    g.add_argument("--evaluate", type=Path, metavar="CHECKPOINT", help="evaluate a checkpoint.pt or best.pt with its "
                   "stored settings: top-1/top-5/loss on the val (if any) and test splits, and --evaluations")
    g.add_argument("--evaluations", type=_kinds, default=list(EVALUATIONS), metavar="KINDS",
                   help="comma-separated, with --evaluate: calibration (ECE, OE, NLL), fgsm, pgd")
    g.add_argument("--evaluation-images", type=int, help="with --evaluate: the first N images of each split "
                   "(default: the whole split)")
    g.add_argument("--tracking", type=tracking_flag, metavar="TRACKERS", help="comma-separated: tensorboard (events "
                   "in the output dir), mlflow=URI (file:/abs/mlruns, sqlite:///abs/mlflow.db), wandb[=PROJECT] "
                   "(offline; wandb.mode=online); logs the settings, every epoch and best.pt's path (default: none; "
                   "resuming: the run's own)")
    return p


def _tiny_dir(train_dir: Path, val_dir: Path | None) -> Path:
    root = train_dir.parent
    if val_dir is not None and val_dir.parent != root:
        raise ConfigError(f"argument --val_dir: expected {root / 'val'} beside --train_dir (got {val_dir})")
    return root


def given_values(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig values of the flags given (the release's spellings translated), nothing from a recipe."""
    values: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None and k not in NOT_CONFIG}
    sink = {SINKHORN_ARGS[k]: getattr(args, k) for k in SINKHORN_ARGS if getattr(args, k) is not None}
    if sink:
        values["sinkhorn"] = sink
    if args.train_dir is not None:
        values["data_dir"] = _tiny_dir(args.train_dir, args.val_dir)
        values.setdefault("dataset", "tinyimagenet")
    if args.mini_imagenet is not None or args.subset is not None:  # the release's ImageNet script has no --dataset
        values.setdefault("dataset", "imagenet")
        if args.mini_imagenet is False:
            values.pop("subset", None)
        elif args.mini_imagenet:
            values.setdefault("subset", RELEASE_SUBSET)
    if args.ngpu == 0:
        values["device"] = "cpu"
    if "network" in values:
        name = values["network"]
        values["network"] = "resnet50" if name == "resnet" and values.get("dataset") == "imagenet" else (
            NETWORK_ALIASES.get(name, name))
    return values


def _validate(values: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise flag_error(ConfigError(error_line(exc))) from None


def config_from_args(args: argparse.Namespace, stored: dict[str, Any] | None = None) -> TrainConfig:
    """The run's TrainConfig: recipe <- flags, or, resuming, the stored settings (flags may not contradict them).

    Raises ConfigError naming the flag.
    """
    given = given_values(args)
    if stored is not None:
        if args.config is not None:
            raise ConfigError("argument --config: a resumed run keeps the settings it started with; drop --config")
        resumed, changed = _validate(stored), _validate(_merged(stored, given))
        old, new = resumed.model_dump(), changed.model_dump()
        keys = [f"sinkhorn.{k}" for k in given.get("sinkhorn", {})] + [k for k in given if k != "sinkhorn"]
        for key in keys:
            a, b = _lookup(old, key), _lookup(new, key)
            if key not in RESUME_MAY_CHANGE and a != b:
                raise ConfigError(f"argument {FLAGS.get(key, key)}: the run being resumed has {key} {a!r}, not "
                                  f"{b!r} (resume keeps the settings a run started with; start a new run to change "
                                  "them)")
        cfg = changed
    else:
        if args.config is not None:
            if args.preset:
                raise ConfigError("argument --config: give --config or --preset, not both")
            base = read_config_file(args.config)
        elif args.preset:
            base = dict(RECIPES[args.preset])
        else:
            base = recipe_for(given.get("dataset", "digits"), given.get("network"))
            if given.get("dataset") == "imagenet" or base.get("dataset") == "imagenet":
                base.setdefault("network", "resnet50")
        cfg = _validate(_merged(base, given))
    if args.num_classes is not None:
        from alignmixup.data import SPECS

        if args.num_classes != SPECS[cfg.dataset].num_classes:
            raise ConfigError(f"argument --num_classes: {cfg.dataset} has {SPECS[cfg.dataset].num_classes} classes "
                              f"(got {args.num_classes})")
    return cfg


def _merged(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """base's values overridden by the flags given; a Sinkhorn flag replaces that one setting, not the others."""
    merged = {**base, **given}
    if isinstance(base.get("sinkhorn"), dict) and "sinkhorn" in given:
        merged["sinkhorn"] = {**base["sinkhorn"], **given["sinkhorn"]}
    return merged


def read_config_file(path: Path) -> dict[str, Any]:
    """The TrainConfig values stored in a JSON or YAML file (validated by the caller)."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"argument --config: cannot read {path} ({exc.strerror})") from None
    except yaml.YAMLError:
        raise ConfigError(f"argument --config: {path} is neither JSON nor YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"argument --config: {path} must hold a mapping of TrainConfig fields")
    return raw


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def flag_error(exc: ConfigError) -> ConfigError:
    """A `field: message` error from the library as `argument --flag: message`."""
    field, sep, message = str(exc).partition(": ")
    return ConfigError(f"argument {FLAGS[field]}: {message}") if sep and field in FLAGS else exc


def command_line(cfg: TrainConfig) -> list[str]:
    """The `alignmixup-train` arguments that rebuild `cfg` exactly (tests check the round trip).

    Every field that differs from what the command line would otherwise choose (the recipe of the data set and
    network, and what follows from the flags already given, such as eval_test from val_fraction) is spelled out.
    A config with a schedule has no flags for it: ValueError (save it as JSON and pass --config FILE instead).
    """
    if cfg.schedule:
        raise ValueError("schedule: a schedule cannot be spelt as alignmixup-train flags; write the TrainConfig as "
                         "JSON and run alignmixup-train --config FILE")
    wanted = cfg.model_dump(mode="json")
    args = ["--dataset", cfg.dataset, "--network", cfg.network]
    if cfg.data_dir is not None:
        args += ["--data-dir", str(cfg.data_dir)]
    for _ in range(len(FLAGS)):  # each round spells every field still differing (some must change together)
        chosen = config_from_args(build_parser().parse_args(args)).model_dump(mode="json")
        missing = [f for f in FLAGS if _lookup(wanted, f) != _lookup(chosen, f)]
        if not missing:
            return args
        args += [a for field in missing for a in _flag_args(field, _lookup(wanted, field))]
    raise ValueError(f"cannot spell {cfg!r} as alignmixup-train arguments")


def _flag_args(field: str, value: Any) -> list[str]:
    flag = FLAGS[field]
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag.removeprefix("--")]
    if field == "mix_layers":
        return [flag, ",".join(map(str, value))]
    if isinstance(value, list):
        return [flag, *(str(v) for v in value)]
    if value is None:
        raise ValueError(f"{field}: None cannot be given on the command line")
    return [flag, str(value)]


def default_output_dir(cfg: TrainConfig) -> Path:
    """runs/<dataset>-<network>-<method>-s<seed>."""
    return Path("runs") / f"{cfg.dataset}-{cfg.network}-{cfg.method}-s{cfg.seed}"


def write_metrics_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Rewrite metrics.csv from the whole history (atomically, so a crash never leaves half a file)."""
    from alignmixup.files import atomic_write

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda fh: fh.write(buf.getvalue().encode()))


def epoch_line(m: Any, epochs: int) -> str:
    """One line per epoch on the console: what was measured, with the protocol's columns only."""
    parts = [f"epoch {m.epoch:>4}/{epochs}", f"lr {m.lr:.4g}", f"train_loss {m.train_loss:.4f}"]
    if m.val_acc is not None:
        parts += [f"val_loss {m.val_loss:.4f}", f"val_acc {m.val_acc:6.2f}", f"val_top5 {m.val_top5:6.2f}",
                  f"best_val {m.best_val_acc:6.2f}"]
    if m.test_acc is not None:
        parts += [f"test_acc {m.test_acc:6.2f}", f"best_test {m.best_test_acc:6.2f}"]
    parts += [f"{m.epoch_time_s:6.1f}s", f"{m.images_per_s:8.0f} img/s"]
    return "  ".join(parts)


def summary_line(cfg: TrainConfig, history: list[Any]) -> str:
    """The run's result in one line: selection on validation, or the release's best and final test accuracy."""
    last = history[-1]
    if cfg.selects_on == "test":
        best = max(history, key=lambda m: m.test_acc)
        return (f"done: best test_acc {last.best_test_acc:.2f} (epoch {best.epoch}, the release's reported number), "
                f"final test_acc {last.test_acc:.2f}")
    text = f"done: best val_acc {last.best_val_acc:.2f}, final val_acc {last.val_acc:.2f}"
    if last.best_val_test_acc is not None:
        text += f", test_acc of best-val weights {last.best_val_test_acc:.2f}"
    if cfg.eval_test == "every":
        text += f", best test_acc over epochs {last.best_test_acc:.2f}"
    return text


@contextmanager
def progress_bar(trainer: Any) -> Iterator[Callable[[int], None] | None]:
    """On a terminal, a bar per epoch with the image rate and the time left (tqdm); in a log file, nothing."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=trainer.epoch_images(), unit="img", unit_scale=True, leave=False, dynamic_ncols=True)

    def advance(images: int) -> None:
        if bar.n == 0:
            bar.set_description(f"epoch {trainer.epoch + 1}/{trainer.cfg.epochs}")
        bar.update(images)
        if bar.n >= bar.total:
            bar.reset()

    try:
        yield advance
    finally:
        bar.close()


def _checkpoint_path(args: argparse.Namespace) -> tuple[Path | None, dict[str, Any] | None]:
    """(checkpoint to resume, its stored settings), or (None, None) for a new run."""
    if args.resume is None:
        return None, None
    from alignmixup.checkpoint import CheckpointError, load

    if args.resume:
        path = Path(args.resume)
    else:
        out = args.output_dir or default_output_dir(config_from_args(args))
        path = out / "checkpoint.pt"
    try:
        return path, load(path)["config"]
    except CheckpointError as exc:
        raise ConfigError(f"argument --resume: {exc}") from None
    except KeyError:
        raise ConfigError(f"argument --resume: checkpoint {path} holds no settings to resume with") from None


def evaluate(args: argparse.Namespace) -> int:
    """Evaluate a saved model with the settings it was trained with, print the metrics and save them as JSON."""
    from alignmixup import checkpoint
    from alignmixup.data import DataError
    from alignmixup.trainer import Trainer

    try:
        state = checkpoint.load(args.evaluate, weights=True)
    except checkpoint.CheckpointError as exc:
        raise ConfigError(f"argument --evaluate: {exc}") from None
    given = given_values(args)
    other = sorted(set(given) - EVALUATE_MAY_SET)
    if other:
        raise ConfigError(f"argument {FLAGS.get(other[0], other[0])}: not with --evaluate (the model is evaluated with "
                          "the settings it was trained with; only the data dir, device and threads may change)")
    evaluation = {**state["config"].get("evaluation", {}), "kinds": args.evaluations,
                  "images": args.evaluation_images, "epochs": []}
    cfg = _validate({**state["config"], **given, "evaluation": evaluation})
    try:
        trainer = Trainer(cfg)
        trainer.model_without_ddp.load_state_dict(state["model"])
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    except (RuntimeError, KeyError) as exc:
        raise ConfigError(f"argument --evaluate: {args.evaluate} does not fit its own settings "
                          f"({str(exc).splitlines()[0]})") from None
    splits = ["val", "test"] if cfg.selects_on == "val" else ["test"]
    results: dict[str, float] = {}
    for split in splits:
        loss, top1, top5 = trainer.evaluate(split)
        results |= {f"{split}_loss": loss, f"{split}_acc": top1, f"{split}_top5": top5}
        results |= trainer.evaluate_beyond_top1(split)
    out = args.output_dir or args.evaluate.parent
    target = out / f"{args.evaluate.stem}-evaluation.json"
    from alignmixup.files import atomic_write

    atomic_write(target, lambda fh: fh.write(json.dumps({"checkpoint": str(args.evaluate), **results}, indent=2)
                                              .encode()))
    for name, value in results.items():
        print(f"{name:<20} {value:.4f}" if not float(value).is_integer() else f"{name:<20} {int(value)}")
    print(f"saved {target}")
    return 0


def check_creatable(out: Path) -> None:
    """ConfigError unless `out` is a folder or can be made one (its nearest existing ancestor a writable folder)."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        why = "not a folder" if not existing.is_dir() else "not writable"
        raise ConfigError(f"argument --output-dir: cannot create {out} ({existing} is {why})")


def run(args: argparse.Namespace) -> int:
    """Train (or resume) the run the flags describe, or evaluate a saved model; returns the exit code."""
    if args.evaluate is not None:
        return evaluate(args)
    resume, stored = _checkpoint_path(args)
    cfg = config_from_args(args, stored)
    out = args.output_dir or (resume.parent if resume is not None else default_output_dir(cfg))
    ckpt = out / "checkpoint.pt"
    if resume is None and ckpt.exists():
        raise ConfigError(f"argument --output-dir: {out} already holds a run (checkpoint.pt); "
                          "pass --resume to continue it or choose another directory")
    trackers, run_ids = command_line_trackers(args.tracking, out, resume is not None, PROG)
    check_creatable(out)

    from alignmixup import checkpoint
    from alignmixup.data import DataError
    from alignmixup.trainer import Trainer, metric_columns

    try:
        trainer = Trainer(cfg)
        if resume is not None:
            trainer.load_checkpoint(resume)
            print(f"resumed from {resume} at epoch {trainer.epoch}", flush=True)
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    except ConfigError as exc:
        raise flag_error(exc) from None
    except checkpoint.CheckpointError as exc:
        raise ConfigError(f"argument --resume: {exc}") from None
    try:  # only once the run is known to be good: bad input leaves no folder behind
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"argument --output-dir: cannot create {out} ({exc.strerror})") from None
    columns = metric_columns(cfg)

    def on_epoch(m: Any) -> None:
        if m.improved:  # before the checkpoint that refers to it
            checkpoint.save_weights(out / "best.pt", trainer.best_state, epoch=m.epoch, metrics=m.as_dict(),
                                    config=cfg.model_dump(mode="json"))
        trainer.save_checkpoint(ckpt)
        write_metrics_csv(out / "metrics.csv", [h.as_dict() for h in trainer.history], columns)
        trackers.log({k: v for k, v in m.as_dict().items() if k != "epoch"}, step=m.epoch)
        print(epoch_line(m, cfg.epochs), flush=True)

    selection = "validation" if cfg.selects_on == "val" else "test (the release's protocol: no validation split)"
    print(f"training {cfg.network} (width {cfg.width}) on {cfg.dataset} with {cfg.method} on {trainer.device}; "
          f"{len(trainer.data.train_idx)} training images; best epoch chosen on {selection}; output in {out}",
          flush=True)
    with trackers.running(out.name, cfg.model_dump(mode="json"), out, run_ids), progress_bar(trainer) as on_batch:
        history = trainer.fit(on_epoch, on_batch)
        best = out / "best.pt"
        trackers.finish({BEST_WEIGHTS_TAG: str(best.resolve())} if best.is_file() else {})
    if history:
        print(summary_line(cfg, history))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, validate, train. Returns the exit code."""
    return run_command(PROG, lambda a: run(build_parser().parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
