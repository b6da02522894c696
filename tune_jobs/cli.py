"""`alignmixup-tune` (also `python -m tune_jobs`): run, resume and list hyperparameter sweeps.

    alignmixup-tune run quickstart                      # a shipped preset, on a local Ray cluster
    alignmixup-tune run my_sweep.yaml --storage s3://bucket/sweeps --address auto
    alignmixup-tune run cifar10-preactresnet18 --dry-run    # check everything it needs, start nothing
    alignmixup-tune resume runs/tune/quickstart-20261124-181500
    alignmixup-tune presets [NAME]
    alignmixup-tune best runs/tune/quickstart-pbt-20261124-181500 --export best/   # weights, TrainConfig

Configuration errors print one line naming the key and exit with code 2 before Ray is imported. A sweep in
which every trial failed exits with code 1; an interrupted one with 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignmixup.console import ConfigError, Parser, add_version, run_command
from tune_jobs import api, config, preflight, presets, storage
from tune_jobs.tables import read_sweep

if TYPE_CHECKING:
    from tune_jobs import driver as driver_types

PROG = "alignmixup-tune"
EXIT_ALL_FAILED = 1
EXIT_INTERRUPTED = 130


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = Parser(prog=PROG, description=__doc__)
    add_version(p)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    r = sub.add_parser("run", help="start a sweep from a YAML file or a preset name", description=None)
    r.add_argument("config", metavar="CONFIG_OR_PRESET")
    r.add_argument("--storage", help=f"directory or URI (s3://, gs://) that holds the experiment (default: the "
                   f"sweep's, else ${api.STORAGE_ENV}, else runs/tune)")
    r.add_argument("--name", help="experiment name (default: <config name>-<date>-<time>)")
    r.add_argument("--num-samples", type=int, help="configurations to sample")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=YAML",
                   help="override a key of the sweep file, validated like the file: --set train.width=0.5 "
                   "--set search.alpha='{loguniform: [0.5, 4]}' (repeatable)")
    r.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a new local cluster)")
    r.add_argument("--dry-run", action="store_true", help="check the sweep, its storage, GPU memory, the cluster's "
                   "resources and the data directory (here, or on the cluster's nodes with an address); run nothing")
    s = sub.add_parser("resume", help="finish an interrupted sweep")
    s.add_argument("experiment", metavar="EXPERIMENT_DIR")
    s.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a new local cluster)")
    ls = sub.add_parser("presets", help="list the shipped presets, or print one")
    ls.add_argument("name", nargs="?", help="print this preset's YAML")
    b = sub.add_parser("best", help="the best trial: its weights, lineage and the command that reproduces it")
    b.add_argument("experiment", metavar="EXPERIMENT_DIR")
    b.add_argument("--export", type=Path, metavar="DIR", help="write its weights (model.safetensors), its "
                   "TrainConfig (train_config.json, with its PBT schedule) and best.json to DIR")
    b.add_argument("--metric", help="an epochs-table column (default: the sweep's scheduler metric)")
    b.add_argument("--mode", choices=["max", "min"], help="(default: the sweep's)")
    b.add_argument("--front", action="store_true", help="a multi-objective sweep: list its Pareto front instead")
    return p


def presets_text(name: str | None) -> str:
    """One line per shipped preset, or the YAML of one."""
    if name is None:
        return "\n".join(presets.summary_line(n) for n in presets.preset_names())
    if name not in presets.preset_names():
        raise ConfigError(f"preset: unknown {name!r} (presets: {', '.join(presets.preset_names())})")
    return presets.preset_text(name)


def prepare_run(args: argparse.Namespace) -> tuple[config.SweepConfig, str]:
    """Validate the sweep with the command line's overrides and check its storage (no Ray)."""
    overrides: dict[str, Any] = {}
    for override in args.overrides:
        path, sep, text = override.partition("=")
        if not sep or not path.strip():
            raise ConfigError(f"argument --set: expected KEY.PATH=VALUE such as train.width=0.5 (got {override!r})")
        overrides[path.strip()] = presets.parse_yaml(text, f"--set {path.strip()}")
    if args.num_samples is not None:
        overrides["num_samples"] = args.num_samples
    raw, stem = presets.load_raw(args.config)
    return api.prepare(api.load_sweep(raw, overrides), storage_location=args.storage, name=args.name,
                       default_name=stem)


def summarise(outcome: driver_types.Outcome) -> int:
    """Print what the sweep did, its best configuration and where the tables are; returns the exit code."""
    sweep, trials, epochs = outcome.sweep, outcome.trials, outcome.epochs
    statuses = ", ".join(f"{n} {s.lower()}" for s, n in trials["status"].value_counts().items())
    device = "GPU" if sweep.scaling.use_gpu else "CPU"
    print(f"\n{len(trials)} trials: {statuses}; {int(trials['stopped_early'].sum())} stopped early by ASHA; "
          f"{trials['device_hours'].sum():.4f} {device}-hours")
    if sweep.search_alg == "optuna":
        print(f"Optuna ran at most {outcome.concurrency} trials at once"
              + (" (the cluster's trial slots; set max_concurrent_trials to change it)"
                 if sweep.max_concurrent_trials is None else " (max_concurrent_trials)"))
    print(f"tables in {outcome.experiment}: {', '.join(outcome.files)}")
    if not epochs.empty and sweep.metric in epochs:
        from tune_jobs import best

        try:  # what `alignmixup-tune best` says: the trial, its weights, the command that reproduces it
            print(best.report(outcome.experiment, sweep))
        except (ConfigError, best.LineageError) as exc:
            print(f"best trial: not determined ({exc})")
    if outcome.errors:
        where = storage.join(outcome.experiment, "trial_<id>", "error.txt")
        print(f"{len(outcome.errors)} of {len(trials)} trials failed: {', '.join(sorted(outcome.errors))}; "
              f"their errors are in {where}", file=sys.stderr)
    if outcome.interrupted:
        print(f"interrupted; finish it with: {PROG} resume {outcome.experiment}")
        return EXIT_INTERRUPTED
    if len(trials) and len(outcome.errors) == len(trials):
        first = next(iter(sorted(outcome.errors.values())))
        print(f"{PROG}: every trial failed; the first error: {_first_error_line(first)}", file=sys.stderr)
        return EXIT_ALL_FAILED
    return 0


def _first_error_line(location: str) -> str:
    """The last line of a Tune error file (the exception itself), or where it is if unreadable."""
    try:
        lines = [line for line in storage.read_text(location).splitlines() if line.strip()]
    except OSError:
        return location
    return lines[-1].strip() if lines else location


def run(argv: Sequence[str] | None) -> int:
    """Parse, validate (no Ray), then run, resume or list."""
    args = parser().parse_args(argv)
    if args.command == "presets":
        print(presets_text(args.name))
        return 0
    if args.command == "best":
        from tune_jobs import best

        experiment = api.experiment_location(args.experiment)
        if args.front:
            if args.metric or args.mode or args.export:
                raise ConfigError("argument --front: lists the front; choose one trial with --metric/--mode instead")
            print(best.front_report(experiment, read_sweep(experiment)))
        else:
            print(best.report(experiment, read_sweep(experiment), args.metric, args.mode, args.export))
        return 0
    if args.command == "run":
        sweep, experiment = prepare_run(args)
        if args.dry_run:
            print(f"{PROG} run --dry-run: nothing started\n  " + "\n  ".join(
                preflight.dry_run(sweep, experiment, args.address)))
            return 0
        estimate = preflight.check_local(sweep)
        if estimate is not None:
            print(preflight.memory_line(sweep, estimate))
    else:
        experiment = api.experiment_location(args.experiment)
    from tune_jobs import driver  # Ray is imported only once the configuration is known to be good

    if args.command == "run":
        outcome = driver.run(sweep, experiment, args.address)
    else:
        outcome = driver.resume(experiment, args.address)
    return summarise(outcome)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    return run_command(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())
