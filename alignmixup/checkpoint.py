"""Atomic checkpoint files read back with `torch.load(weights_only=True)`, and the RNG state they carry."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignmixup.files import atomic_write

FORMAT = "alignmixup-checkpoint-v1"
WEIGHTS_FORMAT = "alignmixup-weights-v1"
# TrainConfig fields that fix the shape of the network's weights: a checkpoint of another value cannot resume
ARCHITECTURE = ("network", "width", "dataset")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the run; the message names the file."""


def save(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint dict atomically."""
    atomic_write(path, lambda fh: torch.save({"format": FORMAT, **state}, fh))


def load(path: Path, weights: bool = False) -> dict[str, Any]:
    """Read a checkpoint safely (tensors and plain containers only); weights=True also takes a weights file
    (best.pt), which holds "model" and "config" like a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path}: not a readable checkpoint ({type(exc).__name__})") from None
    formats = (FORMAT, WEIGHTS_FORMAT) if weights else (FORMAT,)
    if not isinstance(state, dict) or state.get("format") not in formats:
        raise CheckpointError(f"checkpoint {path}: not an alignmixup {' or '.join(formats)} file")
    return state


def check_compatible(path: Path, state: dict[str, Any], cfg: Any) -> None:
    """Raise a CheckpointError naming the field when the checkpoint's network does not fit `cfg`'s."""
    stored = state.get("config") or {}
    for name in ARCHITECTURE:
        if name in stored and stored[name] != cfg.model_dump(mode="json")[name]:
            raise CheckpointError(f"{name}: checkpoint {path} holds a {name} of {stored[name]!r}, "
                                  f"this run asks for {getattr(cfg, name)!r}")


def save_weights(path: Path, weights: dict[str, torch.Tensor], **meta: Any) -> None:
    """Write a model's weights (e.g. the best epoch's) with what describes them (epoch, metrics, config)."""
    atomic_write(path, lambda fh: torch.save({"format": WEIGHTS_FORMAT, "model": weights, **meta}, fh))


def rng_state() -> dict[str, Any]:
    """The global RNG states of python, numpy, torch and CUDA, in weights_only-loadable types."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
