"""What every command line of the project shares: flag parsing that fails in one line, --version, and exits.

All four commands (alignmixup-train, -tune, -analyze, -cluster) build their parser with `parser()` and run
through `run_command`: bad input prints `<prog>: error: <one line>` and exits 2, no flag is ever matched by
a prefix of its name, defaults show in --help, and output piped into a reader that closes early (`| head`)
ends the command quietly instead of with a BrokenPipeError traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from alignmixup import __version__

EXIT_USAGE = 2


class ConfigError(ValueError):
    """Bad input (a flag, a configuration value, a data directory): one line that names the field; exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (raised as ConfigError), no prefix matching, and defaults in --help."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and appends each flag's default (when it has one) to its help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is argparse.SUPPRESS or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def add_version(parser: argparse.ArgumentParser) -> None:
    """`--version`: the package version, the same for all commands."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def run_command(prog: str, body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a command's body and turn its outcomes into exit codes: ConfigError -> 2, Ctrl-C -> 130.

    A reader that closed the pipe (`alignmixup-analyze ... | head`) ends the command quietly: stdout is pointed
    at /dev/null so that the interpreter's final flush does not raise again.
    """
    try:
        return body(argv)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
