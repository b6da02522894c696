"""Model weights in safetensors files that carry the TrainConfig which built them, and `load_model`.

safetensors holds tensors only (nothing executes on load, unlike a pickle) plus a string-to-string header,
where the TrainConfig (JSON) and what selected the weights (epoch, metric values) are kept; so one file is
enough to rebuild the network. `alignmixup-tune best --export` writes one with the config beside it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from alignmixup.config import TrainConfig

FORMAT = "alignmixup-weights-v1"
WEIGHTS_FILE = "model.safetensors"  # in an exported directory, beside CONFIG_FILE
CONFIG_FILE = "train_config.json"


def weights_bytes(state: dict[str, torch.Tensor], cfg: TrainConfig, **meta: Any) -> bytes:
    """A safetensors file of a network's weights, with its TrainConfig and `meta` (JSON values) in the header."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
    header = {"format": FORMAT, "config": cfg.model_dump_json(), **{k: json.dumps(v) for k, v in meta.items()}}
    return save_tensors(tensors, metadata=header)


def read_header(data: bytes) -> dict[str, Any]:
    """The header of a weights file written by weights_bytes: {"config": TrainConfig, other keys: their values}.

    safetensors' layout: 8 bytes little-endian header length, then the JSON header, whose "__metadata__" holds
    the strings weights_bytes wrote.
    """
    (length,) = struct.unpack("<Q", data[:8])
    strings = json.loads(data[8:8 + length]).get("__metadata__") or {}
    if strings.get("format") != FORMAT:
        raise ValueError(f"not an alignmixup weights file ({FORMAT})")
    return {k: TrainConfig.model_validate_json(v) if k == "config" else json.loads(v)
            for k, v in strings.items() if k != "format"}


def read_weights(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, header) of a weights file written by weights_bytes."""
    header = read_header(data)
    return load_tensors(data), header


def load_model(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The network stored at `path`, in eval mode with its weights loaded, ready for evaluation.

    `path`: a directory exported by `alignmixup-tune best --export` (model.safetensors and train_config.json), a
    weights file of a sweep (best-validation weights, safetensors), or the best.pt of `alignmixup-train`. The
    network takes inputs normalised as the run's data pipeline normalises them (alignmixup.data.load_splits).
    """
    from alignmixup.checkpoint import WEIGHTS_FORMAT
    from alignmixup.data import SPECS
    from alignmixup.models import build_model

    path = Path(path)
    file = path / WEIGHTS_FILE if path.is_dir() else path
    if file.suffix == ".pt":
        stored = torch.load(file, map_location="cpu", weights_only=True)
        if not isinstance(stored, dict) or stored.get("format") != WEIGHTS_FORMAT:
            raise ValueError(f"{file}: not the best.pt of alignmixup-train ({WEIGHTS_FORMAT})")
        state, cfg = stored["model"], TrainConfig.model_validate(stored["config"])
    else:
        state, header = read_weights(file.read_bytes())
        cfg = header["config"]
        if path.is_dir() and (path / CONFIG_FILE).is_file():  # the exported config (with its schedule) is the same net
            cfg = TrainConfig.model_validate_json((path / CONFIG_FILE).read_text())
    spec = SPECS[cfg.dataset]
    model = build_model(cfg.network, spec.num_classes, cfg.width, spec.channels)
    model.load_state_dict(state)
    return model.to(device).eval()
