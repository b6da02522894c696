"""CUDA paths (run where a GPU is present): Sinkhorn syncs only at its host reads, bf16 + channels_last."""

import warnings

import pytest
import torch

from alignmixup.config import TrainConfig
from alignmixup.sinkhorn import CUDA_CHECK_EVERY, sinkhorn, sinkhorn_plan
from alignmixup.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_sinkhorn_synchronises_only_at_its_host_reads():
    x = torch.randn(128, 16, 512, device="cuda")
    y = torch.randn(128, 16, 512, device="cuda")
    sinkhorn_plan(x, y)  # warm up kernels and allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:  # check_every=0: the host never reads the flag, the loop never synchronises
        never = sinkhorn(x, y, eps=0.1, max_iter=100, stop="release", check_every=0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with warnings.catch_warnings(record=True) as caught:  # the default: one read every CUDA_CHECK_EVERY
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            res = sinkhorn(x, y, eps=0.1, max_iter=100, stop="release")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert res.reads == -(-res.executed // CUDA_CHECK_EVERY) > 0
    assert sum("synchroniz" in str(w.message) for w in caught) == res.reads
    cpu = sinkhorn_plan(x.cpu(), y.cpu())
    for plan in (never.plan, res.plan):
        torch.testing.assert_close(plan.cpu(), cpu, atol=1e-5, rtol=1e-3)


def test_bf16_channels_last_epoch_on_cuda():
    tr = Trainer(TrainConfig(dataset="digits", width=0.25, epochs=2, batch_size=128, lr_schedule="cosine",
                             lr=0.05, device="cuda"))
    assert tr.autocast.fast_dtype == torch.bfloat16 and tr.data.train.images.is_cuda
    history = tr.fit()
    assert history[-1].val_acc > 50 and all(p.is_contiguous(memory_format=torch.channels_last)
                                            for p in tr.model.parameters() if p.dim() == 4)


def test_memory_estimate_bounds_a_measured_epoch(tmp_path):
    """The packing estimate (alignmixup.memory) against EpochMetrics.gpu_mem_peak_gb, aligning at stage 2 every batch.

    The estimate is an upper bound by construction; a measured peak far below it would waste GPUs in packing
    (benchmarks/memory_check.py reports the ratios for the presets' own trials)."""
    from helpers.data_writers import write_cifar

    from alignmixup.memory import estimate_peak_gb

    write_cifar(tmp_path, classes=10, per_batch=128, test=64)
    cfg = TrainConfig(dataset="cifar10", data_dir=tmp_path, width=0.5, epochs=1, batch_size=128, mix_layers=[2],
                      eval_test="never", device="cuda")
    estimate = estimate_peak_gb(cfg, world_size=1)
    measured = Trainer(cfg).train_epoch().gpu_mem_peak_gb
    assert 0.5 * estimate.allocated_gb <= measured <= estimate.peak_gb, (measured, estimate.parts())
