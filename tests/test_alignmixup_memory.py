"""The GPU memory estimate's parts against independent counts on the CPU: the model's own parameters (and
torchvision's ResNet-50), the data pipeline's tensors, torch's memory profiler during a real forward and during a
real align_mix, and saved_tensors_hooks under bf16 autocast."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.data_writers import write_cifar
from torch.profiler import ProfilerActivity, profile

from alignmixup import memory
from alignmixup.config import SinkhornConfig, TrainConfig
from alignmixup.data import READERS, SPECS, load_splits
from alignmixup.mixing import align_mix, aligned_mix_peak_bytes
from alignmixup.models import build_model


def profiled(fn: Callable[[], Any]) -> tuple[Any, int, int]:
    """(fn's result, peak bytes allocated during fn, bytes still allocated after it), from torch's profiler."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as fh:
            events = json.load(fh)["traceEvents"]
    finally:
        os.remove(path)
    mem = [e["args"] for e in events if e.get("name") == "[memory]"]
    base = mem[0]["Total Allocated"] - mem[0]["Bytes"]
    return out, max(m["Total Allocated"] for m in mem) - base, mem[-1]["Total Allocated"] - base


@pytest.mark.parametrize(("network", "classes"), [("preactresnet18", 10), ("wrn16_8", 100), ("resnet50", 1000)])
def test_parameters_and_buffers_are_the_models(network: str, classes: int) -> None:
    m = memory.measure_forward(network, classes, 1.0, 3, 32, 2, True, None)
    model = build_model(network, classes)
    assert m.params == sum(p.numel() for p in model.parameters())
    assert m.buffers == sum(b.numel() for b in model.buffers())
    if network == "resnet50":
        import torchvision

        assert m.params == sum(p.numel() for p in torchvision.models.resnet50().parameters()) == 25_557_032


def test_resident_data_is_what_the_pipelines_hold(tmp_path: Path) -> None:
    digits = READERS["digits"](None)
    assert memory.SPLIT_SIZES["digits"] == (len(digits.train_y), len(digits.test_y))
    write_cifar(tmp_path, classes=10, per_batch=30, test=40)
    for cfg in (TrainConfig(dataset="digits"), TrainConfig(dataset="cifar10", data_dir=tmp_path)):
        splits = load_splits(cfg, torch.device("cpu"))
        held = sum(t.nbytes for pipe in (splits.train, splits.test) for t in (pipe.images, pipe.labels))
        assert memory.resident_data_bytes(cfg.dataset, len(splits.train), len(splits.test)) == held
    spec = SPECS["tinyimagenet"]  # the estimate of a preset: 100k + 10k images of 72 x 72 x 3 (padded), labels
    assert memory.resident_data_bytes("tinyimagenet", *memory.SPLIT_SIZES["tinyimagenet"]) == \
        110_000 * ((spec.image_size + 2 * spec.pad) ** 2 * 3 + 8)


@pytest.mark.parametrize(("network", "classes", "size", "width", "layer"), [
    ("preactresnet18", 10, 32, 0.5, 2), ("wrn16_8", 100, 32, 0.5, 1), ("resnet50", 10, 32, 0.25, 3),
])
def test_kept_activations_match_a_real_forward(
    network: str, classes: int, size: int, width: float, layer: int | None
) -> None:
    """What a real CPU forward leaves allocated = what the meta forward counts, less the input (allocated before).

    (The CPU kernels keep a few per-channel vectors differently: under 128 KiB here, whatever the batch size.)"""
    batch = 4
    model = build_model(network, classes, width).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    perm = torch.randperm(batch)

    def mix(k: int, h: torch.Tensor) -> torch.Tensor:
        return torch.lerp(h[perm], h, 0.5) if k == layer else h

    out, _, live = profiled(lambda: model(x, mix))
    m = memory.measure_forward(network, classes, width, 3, size, batch, True, layer)
    before = x.nbytes + (perm.nbytes if layer is not None else 0)  # kept, but allocated before the forward
    assert live == pytest.approx(m.kept_fp32 - before + out.nbytes, abs=128 * 1024)


def test_bf16_autocast_keeps_half_the_bytes_and_bf16_weights() -> None:
    """saved_tensors_hooks over a real bf16-autocast CPU forward: bf16 activations, bf16 copies of the weights."""
    batch, layer = 2, 2
    model = build_model("preactresnet18", 10).to(memory_format=torch.channels_last)
    state = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    perm = torch.tensor([1, 0])
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in state:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16):
        model(x, lambda k, h: torch.lerp(h[perm], h, 0.5) if k == layer else h)
    m = memory.measure_forward("preactresnet18", 10, 1.0, 3, 32, batch, True, layer)
    assert sum(kept.values()) == pytest.approx(m.kept_bf16, rel=0.005)
    assert m.kept_bf16 > 2 * sum(p.numel() for p in model.parameters())  # the weights' copies are in it


@pytest.mark.parametrize(("batch", "side", "channels", "dtype", "direction"), [
    (4, 16, 64, torch.float32, 0), (6, 8, 128, torch.float32, 1), (4, 16, 32, torch.bfloat16, 0),
])
def test_align_mix_peak_matches_the_profiler(
    batch: int, side: int, channels: int, dtype: torch.dtype, direction: int
) -> None:
    """The analysis the estimate uses for align_mix is an upper bound within 2% of its real peak."""
    h = torch.randn(batch, channels, side, side, dtype=dtype, requires_grad=True)
    h = h.contiguous(memory_format=torch.channels_last)
    perm = torch.randperm(batch)
    sinkhorn = SinkhornConfig(max_iter=3, stop="fixed", cost_scaling="mean")
    _, peak, _ = profiled(lambda: align_mix(h, perm, 0.3, direction, sinkhorn))
    estimate = aligned_mix_peak_bytes(batch, side * side, channels, feature_bytes=h.element_size())
    assert peak <= estimate <= 1.02 * peak


def test_estimate_takes_the_largest_mixing_stage_and_the_per_worker_batch() -> None:
    base = dict(dataset="tinyimagenet", data_dir="/nowhere", batch_size=256, val_fraction=0.1)
    deep = memory.estimate_peak_gb(TrainConfig(**base, mix_layers=[0, 4]), world_size=1)
    wide = memory.estimate_peak_gb(TrainConfig(**base, mix_layers=[0, 2, 4]), world_size=1)
    assert (deep.mix_layer, wide.mix_layer) == (4, 2) and wide.peak_gb > deep.peak_gb
    # stage 2 of PreActResNet-18 at 64 x 64: 32 x 32 positions, 128 channels, bf16 features
    assert wide.mixing_gb * memory.BYTES_PER_GB == aligned_mix_peak_bytes(256, 1024, 128, feature_bytes=2)
    pair = memory.estimate_peak_gb(TrainConfig(**base, mix_layers=[0, 2, 4]), world_size=2)
    assert pair.per_worker_batch == 128 and pair.data_gb == wide.data_gb  # every rank holds the whole set
    assert pair.model_gb > wide.model_gb and pair.mixing_gb == pytest.approx(wide.mixing_gb / 2, rel=1e-3)
    erm = memory.estimate_peak_gb(TrainConfig(**base, method="erm"), world_size=1)
    assert erm.mixing_gb == 0 and erm.mix_layer is None
    fp32 = memory.estimate_peak_gb(TrainConfig(**base, mix_layers=[0, 2, 4], amp=False), world_size=1)
    assert fp32.activations_gb > 1.5 * wide.activations_gb
    assert wide.peak_gb == pytest.approx(sum(v for k, v in wide.parts().items() if k not in ("allocated_gb",
                                                                                              "peak_gb")))
