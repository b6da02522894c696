"""`alignmixup-tune` (also `python -m tune_jobs`): run, resume and list hyperparameter sweeps.

    alignmixup-tune run quickstart                      # a shipped preset, on a local Ray cluster
    alignmixup-tune run my_sweep.yaml --storage s3://bucket/sweeps --address auto
    alignmixup-tune resume runs/tune/quickstart-20261124-181500
    alignmixup-tune presets [NAME]

Configuration errors print one line naming the key and exit with code 2 before Ray is imported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from alignmixup.config import ConfigError
from tune_jobs import config
from tune_jobs.layout import HP_PREFIX, SWEEP_FILE

if TYPE_CHECKING:
    from tune_jobs import driver as driver_types

EXIT_BAD_CONFIG = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = _Parser(prog="alignmixup-tune", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="start a sweep from a YAML file or a preset name")
    r.add_argument("config", metavar="CONFIG_OR_PRESET")
    r.add_argument("--storage", help="directory or URI (s3://, gs://) that holds the experiment")
    r.add_argument("--name", help="experiment name (default: <config name>-<date>-<time>)")
    r.add_argument("--num-samples", type=int, help="trials to sample (with a grid: repeats of it)")
    r.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a new local cluster)")
    s = sub.add_parser("resume", help="finish an interrupted sweep")
    s.add_argument("experiment", metavar="EXPERIMENT_DIR")
    s.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a new local cluster)")
    ls = sub.add_parser("presets", help="list the shipped presets, or print one")
    ls.add_argument("name", nargs="?", help="print this preset's YAML")
    return p


def presets_text(name: str | None) -> str:
    """One line per shipped preset, or the YAML of one."""
    if name is None:
        return "\n".join(config.summary_line(n) for n in config.preset_names())
    if name not in config.preset_names():
        raise ConfigError(f"preset: unknown {name!r} (presets: {', '.join(config.preset_names())})")
    return config.preset_text(name)


def prepare_run(args: argparse.Namespace) -> tuple[config.SweepConfig, str]:
    """Validate the sweep with the command line's overrides and check its storage (no Ray)."""
    raw, stem = config.load_raw(args.config)
    overrides = {"storage": args.storage, "name": args.name, "num_samples": args.num_samples}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    raw.setdefault("name", f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    sweep = config.validate(raw)
    config.check_storage(sweep)
    experiment = config.experiment_path(sweep.storage, sweep.name)
    if not config.URI.match(experiment) and Path(experiment).exists():
        raise ConfigError(f"name: {experiment} exists; resume it with `alignmixup-tune resume {experiment}`")
    return sweep, experiment


def prepare_resume(args: argparse.Namespace) -> str:
    """The experiment to resume, as the path or URI Tune restores from."""
    experiment = args.experiment
    if config.URI.match(experiment):
        return experiment.rstrip("/")
    path = Path(experiment).expanduser().resolve()
    if not (path / SWEEP_FILE).is_file():
        raise ConfigError(f"experiment: {experiment} holds no {SWEEP_FILE} (not a directory `run` made)")
    return str(path)


def summarise(outcome: driver_types.Outcome) -> int:
    """Print the best trial and where the tables are; returns the exit code."""
    sweep, trials, epochs = outcome.sweep, outcome.trials, outcome.epochs
    statuses = ", ".join(f"{n} {s.lower()}" for s, n in trials["status"].value_counts().items())
    print(f"\n{len(trials)} trials: {statuses}; {int(trials['stopped_early'].sum())} stopped early by ASHA; "
          f"{trials['device_hours'].sum():.4f} {trials['device'].iloc[0].upper()}-hours")
    if not epochs.empty:
        per_trial = epochs.groupby("trial_id")[sweep.metric].agg(sweep.mode)
        best = per_trial.idxmax() if sweep.mode == "max" else per_trial.idxmin()
        row = trials.set_index("trial_id").loc[best]
        hps = ", ".join(f"{c.removeprefix(HP_PREFIX)}={row[c]:.4g}" if isinstance(row[c], float)
                        else f"{c.removeprefix(HP_PREFIX)}={row[c]}" for c in trials.columns if c.startswith(HP_PREFIX))
        print(f"best trial {best}: {sweep.metric} {per_trial[best]:.2f} after {row['epochs']} epochs; {hps}")
    print(f"tables in {outcome.experiment}: {', '.join(outcome.files)}")
    if outcome.interrupted:
        print(f"interrupted; finish it with: alignmixup-tune resume {outcome.experiment}")
        return EXIT_INTERRUPTED
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    try:
        args = parser().parse_args(argv)
        if args.command == "presets":
            print(presets_text(args.name))
            return 0
        if args.command == "run":
            sweep, experiment = prepare_run(args)
        else:
            experiment = prepare_resume(args)
    except ConfigError as exc:
        print(f"alignmixup-tune: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    from tune_jobs import driver  # Ray is imported only once the configuration is known to be good

    if args.command == "run":
        outcome = driver.run(sweep, experiment, args.address)
    else:
        outcome = driver.resume(experiment, args.address)
    return summarise(outcome)


if __name__ == "__main__":
    sys.exit(main())
