"""The shipped sweep presets (one YAML file each in this folder) and reading a sweep file or preset by name."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from alignmixup.console import ConfigError


def preset_names() -> list[str]:
    """Names of the presets shipped in tune_jobs/presets."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    """The YAML text of a shipped preset."""
    return resources.files(__name__).joinpath(f"{name}.yaml").read_text()


def summary_line(name: str) -> str:
    """`name  description` of a shipped preset, for `alignmixup-tune presets`."""
    raw = yaml.safe_load(preset_text(name))
    return f"{name:<32} {raw.get('description', '')}"


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> data; a syntax error becomes one ConfigError line with the line and column it is at."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config: {source} is not valid YAML{where}: {problem}") from None


def load_raw(source: str) -> tuple[dict[str, Any], str]:
    """(mapping, default experiment stem) from a YAML file path or a preset name."""
    path = Path(source)
    if path.is_file():
        text, stem = path.read_text(), path.stem
    elif source in preset_names():
        text, stem = preset_text(source), source
    else:
        raise ConfigError(f"config: no file or preset named {source!r} (presets: {', '.join(preset_names())})")
    raw = parse_yaml(text, source)
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {source} must hold a mapping of sweep settings")
    return raw, stem
