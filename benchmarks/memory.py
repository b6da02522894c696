"""Peak memory of the aligned mix: align_mix now vs the implementation before (kept here as the baseline),
measured on a CPU with torch.profiler's allocation events, beside alignmixup.mixing.aligned_mix_peak_bytes.

The peak is the largest number of bytes allocated inside the call beyond what existed before it (outputs and
tensors kept for backward included), read from the profiler's per-allocation "[memory]" events. Shapes are
PreActResNet-18's at full width on 32x32 inputs: stage 4 (N = 16, C = 512), 3 (64, 256), 2 (256, 128).

    python -m benchmarks.memory --batch 128
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from alignmixup.config import SinkhornConfig
from alignmixup.mixing import align_mix, aligned_mix_peak_bytes
from benchmarks._machine import add_common_args, print_table, save, setup

STAGES = ((16, 512), (64, 256), (256, 128))  # (N, C) after stages 4, 3, 2


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated on the CPU while fn() runs, beyond the bytes allocated when it starts (fn's
    result is kept alive to the end, so what it returns or saves for backward counts)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    del result
    live = peak = 0
    for e in sorted(events, key=lambda e: e["args"]["Ev Idx"]):
        if e["args"]["Device Type"] == 0:  # CPU
            live += e["args"]["Bytes"]
            peak = max(peak, live)
    return peak


def _previous_log_sinkhorn(cost: torch.Tensor, eps: float, max_iter: int) -> torch.Tensor:
    """The former _sinkhorn_log, host-checked release rule: -C/eps and its transposed copy beside the caller's
    cost, a fresh (B, N, N) temporary per half-step, the plan from exp(k + u + v)."""
    batch, n, m = cost.shape
    k = cost.neg().div_(eps)
    kt = k.transpose(1, 2).contiguous()
    u, v = k.new_zeros(batch, n), k.new_zeros(batch, m)

    def potential(kk: torch.Tensor, w: torch.Tensor, log_a: float) -> torch.Tensor:
        buf = kk + w.unsqueeze(2)
        top = buf.amax(dim=1, keepdim=True)
        buf.sub_(top).clamp_min_(-80.0)
        return buf.exp_().sum(dim=1).log_().add_(top.squeeze(1)).neg_().add_(log_a)

    for _ in range(max_iter):
        u_new = potential(kt, v, -math.log(n))
        v = potential(k, u_new, -math.log(m))
        err = (u_new - u).abs_().sum()
        u = u_new
        if bool(err < 0.1 * batch / eps):
            break
    return torch.exp((k + u.unsqueeze(2)).add_(v.unsqueeze(1)))


def _previous_squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The former squared_distances: (B, N, C) temporaries for the squares, then an out-of-place baddbmm."""
    x2 = x.pow(2).sum(-1, keepdim=True)
    y2 = y.pow(2).sum(-1).unsqueeze(-2)
    return torch.baddbmm(x2 + y2, x, y.transpose(1, 2), alpha=-2.0).clamp_min_(0.0)


@torch.no_grad()
def previous_plan(x: torch.Tensor, y: torch.Tensor, eps: float, max_iter: int, cost_scaling: str) -> torch.Tensor:
    """The former sinkhorn_plan (release rule, host-checked on a CPU): the cost from an out-of-place baddbmm,
    scaled out of place and alive throughout, then the former loop."""
    cost = _previous_squared_distances(x.float(), y.float())
    if cost_scaling == "mean":
        cost = cost / cost.mean(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return _previous_log_sinkhorn(cost, eps, max_iter)


def previous_align_mix(h: torch.Tensor, perm: torch.Tensor, lam: float, direction: int, eps: float, max_iter: int,
                       cost_scaling: str) -> torch.Tensor:
    """The aligned mix as it was before this change (commit 87b7db0), kept as the memory baseline: R = plan * N
    out of place, an out-of-place lerp."""
    b, c, hh, ww = h.shape
    n = hh * ww
    a = h.permute(0, 2, 3, 1).reshape(b, n, c)
    p = a[perm]
    r = (previous_plan(a.detach(), p.detach(), eps, max_iter, cost_scaling) * n).to(a.dtype)
    if direction == 0:
        mixed = torch.lerp(torch.bmm(r, p), a, lam)
    else:
        mixed = torch.lerp(p, torch.bmm(r.transpose(1, 2), a), lam)
    return mixed.reshape(b, hh, ww, c).permute(0, 3, 1, 2)


def feature_map(batch: int, positions: int, channels: int, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """A (B, C, H, W) map of raw-scale features that requires grad, as a stage's output in training."""
    side = math.isqrt(positions)
    h = torch.relu(torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(positions)))
    h = h.to(dtype).contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return h.requires_grad_()


def measure(batch: int, positions: int, channels: int, dtype: torch.dtype = torch.float32,
            channels_last: bool = True, iters: int = 5) -> dict:
    """Peak extra bytes of align_mix now and before, and the estimate, for one shape (a few fixed iterations:
    the peak does not depend on how many)."""
    h = feature_map(batch, positions, channels, dtype, channels_last)
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(0))
    cfg = SinkhornConfig(eps=0.1, cost_scaling="mean", stop="fixed", max_iter=iters)
    now = peak_extra_bytes(lambda: align_mix(h, perm, 0.4, 0, cfg))
    before = peak_extra_bytes(lambda: previous_align_mix(h, perm, 0.4, 0, 0.1, iters, "mean"))
    estimate = aligned_mix_peak_bytes(batch, positions, channels, feature_bytes=h.element_size())
    bnn = batch * positions * positions * 4
    return {"B": batch, "N": positions, "C": channels, "dtype": str(dtype).removeprefix("torch."),
            "channels_last": channels_last, "before_MiB": before / 2**20, "now_MiB": now / 2**20,
            "reduction": before / now, "estimate_MiB": estimate / 2**20, "estimate_over_measured": estimate / now,
            "before_in_BNN": before / bnn, "now_in_BNN": now / bnn}


def main(argv: list[str] | None = None) -> None:
    """Measure every stage shape in fp32 and bf16, print the table and save the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    add_common_args(parser)
    args = parser.parse_args(argv)
    device = setup(args)
    if device.type != "cpu":
        raise SystemExit("benchmarks.memory measures CPU allocations: run it with --device cpu")
    rows = [measure(args.batch, n, c, dtype, cl) for n, c in STAGES for dtype in (torch.float32, torch.bfloat16)
            for cl in (True, False)]
    print_table(rows, ["N", "C", "dtype", "channels_last", "before_MiB", "now_MiB", "reduction", "estimate_MiB",
                       "estimate_over_measured", "before_in_BNN", "now_in_BNN"])
    notes = [
        "peak bytes allocated inside the call beyond those allocated at its start (torch.profiler '[memory]' "
        "events), output and tensors saved for backward included; features require grad",
        "before: the implementation of commit 87b7db0 (benchmarks.memory.previous_align_mix); now: "
        "alignmixup.mixing.align_mix; estimate: alignmixup.mixing.aligned_mix_peak_bytes",
        "*_in_BNN: the peak in units of one (B, N, N) fp32 tensor",
    ]
    save("memory", device, args, rows, notes)


if __name__ == "__main__":
    main()
