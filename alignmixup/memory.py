"""Peak GPU memory of one training worker, estimated before anything runs: what lets a sweep pack trials on a card.

The estimate adds what a worker holds at the end of a training forward, the moment of its peak (1 GB = 1e9 bytes,
as EpochMetrics.gpu_mem_peak_gb, which measures torch.cuda.max_memory_allocated):

- data: the training and test sets as DevicePipeline keeps them on the device (uint8, zero-padded, int64 labels);
  ImageNet streams through a DataLoader instead (two batches in flight);
- model: fp32 weights, the previous step's gradients (Trainer.step zeroes them only after the forward) and SGD's
  momentum, plus DDP's gradient buckets when the trial has more than one worker;
- activations: the input batch and every tensor autograd keeps for the backward, counted by running the network's
  forward on the meta device (shapes only, no arithmetic) under saved_tensors_hooks; with bf16 autocast on CUDA
  the kept floating-point tensors are bf16 and autocast keeps a bf16 copy of every conv and linear weight;
- mixing: align_mix's own peak (Sinkhorn buffers, the plan, the partner features), at the mixing layer where it and
  the activations together are largest: mostly the one with the most spatial positions N (its buffers are (B, N, N));
- allowance: the CUDA context, cuDNN's workspace and the caching allocator's slack, which torch does not report
  as allocated tensors but which take room on the card.

The sum is an upper bound by construction: align_mix's transient buffers are counted together with the activations
of the stages after the mixing layer, which do not exist yet when the Sinkhorn runs.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch
from torch import nn

from alignmixup.config import TrainConfig
from alignmixup.data import SPECS
from alignmixup.mixing import aligned_mix_peak_bytes
from alignmixup.models import build_model

BYTES_PER_GB = 1e9
# Images per split as the readers return them (the validation share is carved out of the training split, which
# the device holds whole). digits: 1797 images, a fixed fifth (1797 // 5) held out for test.
SPLIT_SIZES: dict[str, tuple[int, int]] = {
    "digits": (1438, 359),
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "tinyimagenet": (100_000, 10_000),
}
STREAMED_BATCHES = 2  # ImageNet: the batch being trained on and the next one, copied ahead (non_blocking)
# Allowances, not measured here (no GPU): benchmarks/gpu_check.sh measures them on a card (memory_check.py).
CUDA_CONTEXT_GB = 0.6  # per process: the CUDA context with lazy module loading, cuBLAS and cuDNN handles
NCCL_GB = 0.3  # per process of a multi-worker trial: NCCL's communicators and buffers
CUDNN_WORKSPACE_GB = 0.25  # cudnn.benchmark tries algorithms with workspaces from the caching allocator
ALLOCATOR_SLACK = 0.08  # reserved beyond allocated: the caching allocator's rounding and fragmentation


@dataclass(frozen=True)
class MemoryEstimate:
    """One worker's peak GPU memory, by part, in GB; `mix_layer` is the mixing layer at which it peaks."""

    data_gb: float
    model_gb: float
    activations_gb: float
    mixing_gb: float
    allowance_gb: float
    mix_layer: int | None
    per_worker_batch: int

    @property
    def allocated_gb(self) -> float:
        """Tensors alive at the peak: what torch.cuda.max_memory_allocated (gpu_mem_peak_gb) should not exceed."""
        return self.data_gb + self.model_gb + self.activations_gb + self.mixing_gb

    @property
    def peak_gb(self) -> float:
        """Room the worker takes on its card: the tensors plus the allowance."""
        return self.allocated_gb + self.allowance_gb

    def parts(self) -> dict[str, float]:
        """The parts and the totals, for tables and JSON."""
        return {"data_gb": self.data_gb, "model_gb": self.model_gb, "activations_gb": self.activations_gb,
                "mixing_gb": self.mixing_gb, "allowance_gb": self.allowance_gb, "allocated_gb": self.allocated_gb,
                "peak_gb": self.peak_gb}


@dataclass(frozen=True)
class ForwardMeasure:
    """What one training forward keeps for the backward (bytes, fp32 and bf16-autocast views) and its stage shapes."""

    params: int  # parameter elements
    buffers: int  # buffer elements (BatchNorm running statistics)
    kept_fp32: int  # bytes of kept tensors in fp32 (parameters and buffers excluded: the model's part)
    kept_bf16: int  # the same under bf16 autocast: floating kept tensors in bf16, conv/linear weights copied to bf16
    stages: tuple[tuple[int, int, int], ...]  # (C, H, W) at mixing layers 0..K


@functools.cache
def _meta_model(network: str, num_classes: int, width: float, channels: int, channels_last: bool) -> nn.Module:
    """The network on the meta device (no storage), in training mode, built once per process."""
    with torch.device("meta"):
        model = build_model(network, num_classes, width, channels)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(memory_format=fmt).train()


@functools.cache
def measure_forward(
    network: str, num_classes: int, width: float, channels: int, image_size: int, batch: int, channels_last: bool,
    mix_layer: int | None,
) -> ForwardMeasure:
    """Run the network's training forward on the meta device and count the tensors autograd keeps.

    mix_layer: where the batch is mixed (pixels or features, with a lerp against a permutation as Mixer does;
    align_mix's own tensors are counted by mixing.aligned_mix_peak_bytes), None for no mixing.
    """
    model = _meta_model(network, num_classes, width, channels, channels_last)
    x = torch.empty(batch, channels, image_size, image_size, device="meta")
    x = x.contiguous(memory_format=torch.channels_last)  # as DevicePipeline's batches
    perm = torch.arange(batch, device="meta")
    state = {id(t) for t in itertools.chain(model.parameters(), model.buffers())}  # counted with the model
    kept: dict[int, torch.Tensor] = {}  # by identity: a tensor two ops keep is one tensor (references hold the ids)
    stages: list[tuple[int, int, int]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.setdefault(id(t), t)
        return t

    def hook(layer: int, h: torch.Tensor) -> torch.Tensor:
        stages.append(tuple(h.shape[1:]))
        return torch.lerp(h[perm], h, 0.5) if layer == mix_layer else h

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, hook)
    # autocast's cache holds a bf16 copy of every conv and linear parameter until the forward's autocast region ends
    casts = sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear) for p in m.parameters())
    fp32, bf16 = 0, 2 * casts
    for t in (t for key, t in kept.items() if key not in state):
        fp32 += t.numel() * t.element_size()
        bf16 += t.numel() * 2 if t.is_floating_point() else t.numel() * t.element_size()
    return ForwardMeasure(
        params=sum(p.numel() for p in model.parameters()), buffers=sum(b.numel() for b in model.buffers()),
        kept_fp32=fp32, kept_bf16=bf16, stages=tuple(stages),
    )


def resident_data_bytes(dataset: str, train_images: int, test_images: int) -> int:
    """Bytes DevicePipeline keeps on the device for both splits: padded uint8 images and int64 labels."""
    spec = SPECS[dataset]
    side = spec.image_size + 2 * spec.pad
    return (train_images + test_images) * (side * side * spec.channels + 8)


def _mixed_layers(cfg: TrainConfig) -> list[int | None]:
    """The layers a batch of this run may be mixed at (Mixer's choice); [None] without mixing."""
    if cfg.method == "erm":
        return [None]
    if cfg.method == "mixup":
        return [0]
    return list(cfg.mix_layers or [])


def estimate_peak_gb(cfg: TrainConfig, world_size: int) -> MemoryEstimate:
    """The peak GPU memory of one of `world_size` workers training `cfg` (CUDA, bf16 autocast when cfg.amp)."""
    spec = SPECS[cfg.dataset]
    batch = cfg.batch_size // world_size
    amp = cfg.amp
    feature_bytes = 2 if amp else 4
    pixels = batch * spec.channels * spec.image_size**2
    if cfg.dataset in SPLIT_SIZES:
        data = resident_data_bytes(cfg.dataset, *SPLIT_SIZES[cfg.dataset])
        batch_bytes = pixels * 4 + batch * 8  # the normalised fp32 batch and its labels
    else:
        data = 0
        batch_bytes = STREAMED_BATCHES * (pixels * 4 + batch * 8)
    best: tuple[float, int | None, int, int] | None = None  # (activations + mixing, layer, activations, mixing)
    for layer in _mixed_layers(cfg):
        m = measure_forward(cfg.network, spec.num_classes, cfg.width, spec.channels, spec.image_size, batch,
                            cfg.channels_last, layer)
        act = (m.kept_bf16 if amp else m.kept_fp32) + batch_bytes
        mix = 0
        if cfg.method == "alignmixup" and layer:
            c, h, w = m.stages[layer]
            mix = aligned_mix_peak_bytes(batch, h * w, c, feature_bytes=feature_bytes)
        if best is None or act + mix > best[0]:
            best = (act + mix, layer, act, mix)
    assert best is not None
    _, layer, act, mix = best
    model = 4 * (3 * m.params + m.buffers) + (4 * m.params if world_size > 1 else 0)  # one network at every layer
    allocated = (data + model + act + mix) / BYTES_PER_GB
    allowance = CUDA_CONTEXT_GB + CUDNN_WORKSPACE_GB + ALLOCATOR_SLACK * allocated
    if world_size > 1:
        allowance += NCCL_GB
    return MemoryEstimate(
        data_gb=data / BYTES_PER_GB, model_gb=model / BYTES_PER_GB, activations_gb=act / BYTES_PER_GB,
        mixing_gb=mix / BYTES_PER_GB, allowance_gb=allowance, mix_layer=layer, per_worker_batch=batch,
    )
