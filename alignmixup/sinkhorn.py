"""Batched log-domain Sinkhorn for entropic optimal transport between sets of spatial positions.

The release (AlignMixup, CVPR 2022) runs this loop with a `.item()` per iteration for its stopping
test. Here the stopping rule is evaluated on the device: once the batch has converged, further
iterations leave the potentials unchanged (masked update), so the plan is the one the release's loop
returns while the host only looks at the flag every `check_every` iterations (every iteration on a
CPU, where reading it costs nothing; never on CUDA by default, a fixed trip count that can be
captured by CUDA graphs or `torch.compile`).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Literal

import torch

StopRule = Literal["release", "fixed"]
CostScaling = Literal["none", "mean"]

EXP_FLOOR = -80.0  # CPU: exponents are floored here (see _potential); exp(-80) is 1.8e-35
COMPILE_BLOCK = 10  # iterations per compiled block when the host never reads the stop test
_COMPILED = os.environ.get("ALIGNMIXUP_SINKHORN_COMPILE", "") == "1"


def set_compiled(enabled: bool) -> None:
    """Make torch.compile'd iteration blocks the default of sinkhorn_plan (or the op-by-op loop again)."""
    global _COMPILED
    _COMPILED = enabled


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances (B, N, M) between rows of x (B, N, D) and y (B, M, D)."""
    x2 = x.pow(2).sum(-1, keepdim=True)
    y2 = y.pow(2).sum(-1).unsqueeze(-2)
    return torch.baddbmm(x2 + y2, x, y.transpose(1, 2), alpha=-2.0).clamp_min_(0.0)


@torch.no_grad()
def sinkhorn_plan(
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 0.1,
    max_iter: int = 100,
    *,
    stop: StopRule = "release",
    tol: float = 0.1,
    cost_scaling: CostScaling = "none",
    check_every: int | None = None,
    compiled: bool | None = None,
) -> torch.Tensor:
    """Entropic OT plan (B, N, M) between x (B, N, D) and y (B, M, D), uniform marginals 1/N and 1/M.

    Cost: squared Euclidean distance, computed in fp32 (fp64 inputs stay fp64) whatever the autocast state.

    stop:
      - "release": stop once the batch mean of the L1 change of the row potential falls below `tol`
        (the release's rule, tol 0.1), at most `max_iter` iterations;
      - "fixed": exactly `max_iter` iterations.
    cost_scaling:
      - "none": the release. eps is absolute on raw features; their squared distances are about 1e3,
        so with eps 0.1 the 100 iterations do not converge and the plan stays close to a hard
        assignment. The six published presets use it, to reproduce the paper.
      - "mean": each pair's cost is divided by its mean, so eps is relative and means the same thing
        whatever the feature scale. The tuning presets use it: the feature scale drifts during
        training and differs between stages, which would make an absolute eps meaningless to search.
    check_every: how often the host reads the convergence flag to leave the loop early (release rule
      only). None: every iteration on CPU, never on CUDA (no host-device synchronisation in the loop).
    compiled: run the iterations as torch.compile'd blocks (check_every iterations, or COMPILE_BLOCK when
      the host never checks), each block fused into a few kernels. None: the module default, off unless
      set_compiled(True) or ALIGNMIXUP_SINKHORN_COMPILE=1. It pays on CUDA, where the op-by-op loop is bound
      by kernel launches; each new shape, eps or block length compiles once (seconds to a minute).

    The plan carries no gradient, as in the release (it is detached there).
    """
    if x.dim() != 3 or y.dim() != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"sinkhorn_plan expects x (B, N, D) and y (B, M, D), got {tuple(x.shape)}, {tuple(y.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (got {eps})")
    if check_every is None:
        check_every = 1 if x.device.type == "cpu" else 0
    dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 at least, fp64 kept
    with torch.autocast(device_type=x.device.type, enabled=False):
        cost = squared_distances(x.to(dtype), y.to(dtype))
        if cost_scaling == "mean":
            cost = cost / cost.mean(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        elif cost_scaling != "none":
            raise ValueError(f"cost_scaling must be 'none' or 'mean' (got {cost_scaling!r})")
        return _sinkhorn_log(cost, eps, max_iter, stop, tol, check_every, _COMPILED if compiled is None else compiled)


def _sinkhorn_log(
    cost: torch.Tensor, eps: float, max_iter: int, stop: StopRule, tol: float, check_every: int, compiled: bool
) -> torch.Tensor:
    """Log-domain iterations on the potentials u (B, N) and v (B, M), in units of eps (f = eps*u, g = eps*v).

    Both updates reduce over dim 1 of a contiguous (B, ., .) tensor: -C/eps for the columns and its
    transpose for the rows, which a CPU vectorises along the contiguous dim. With check_every == 1 the host
    leaves the loop as the release does and no masking is needed; otherwise converged problems keep their
    potentials through a masked update, so any check_every returns the release's plan.
    """
    batch, n, m = cost.shape
    k = cost.neg().div_(eps)  # -C/eps, (B, N, M)
    kt = k.transpose(1, 2).contiguous()  # (B, M, N)
    u = k.new_zeros(batch, n)
    v = k.new_zeros(batch, m)
    # the release's test, mean_b sum_i |f_new - f| < tol, in units of eps and summed over the batch
    thresh = tol * batch / eps if stop == "release" else -1.0
    floor = EXP_FLOOR if k.device.type == "cpu" else None
    log_mu, log_nu, release = -math.log(n), -math.log(m), stop == "release"
    if release and check_every == 1 and not compiled:
        u, v = _host_checked_loop(k, kt, u, v, max_iter, log_mu, log_nu, thresh, floor)
    else:  # blocks of masked iterations, the host reading the flag between blocks (or never)
        block = check_every if release and check_every > 0 else (COMPILE_BLOCK if compiled else max(max_iter, 1))
        done = torch.zeros((), dtype=torch.bool, device=k.device)
        for start in range(0, max_iter, block):
            steps = min(block, max_iter - start)
            run = _compiled_steps(steps, release, floor) if compiled else functools.partial(
                _steps, steps=steps, release=release, floor=floor)
            u, v, done = run(k, kt, u, v, done, log_mu, log_nu, thresh)
            if release and check_every and bool(done):
                break
    # k + u rounds exactly as the last column update did, so the plan's columns sum to 1/M to rounding
    return torch.exp((k + u.unsqueeze(2)).add_(v.unsqueeze(1)))


def _potential(kk: torch.Tensor, w: torch.Tensor, log_a: float, floor: float | None) -> torch.Tensor:
    """log_a - logsumexp over dim 1 of kk + w[:, :, None] (one Sinkhorn half-step, in units of eps).

    On a CPU the exponent is floored at EXP_FLOOR after the max is taken out: the vectorised exp takes a slow
    path (about 15x) on arguments that underflow, which raw-scale costs over a small eps produce in bulk, and
    after the shift the largest term is exp(0) = 1, so terms under exp(-80) cannot change the sum in fp32 or fp64.
    """
    buf = kk + w.unsqueeze(2)
    top = buf.amax(dim=1, keepdim=True)
    buf.sub_(top)
    if floor is not None:
        buf.clamp_min_(floor)
    return buf.exp_().sum(dim=1).log_().add_(top.squeeze(1)).neg_().add_(log_a)


def _host_checked_loop(
    k: torch.Tensor, kt: torch.Tensor, u: torch.Tensor, v: torch.Tensor, max_iter: int, log_mu: float,
    log_nu: float, thresh: float, floor: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's loop: the host reads the stop test every iteration, so no masking is needed."""
    for _ in range(max_iter):
        u_new = _potential(kt, v, log_mu, floor)
        v = _potential(k, u_new, log_nu, floor)
        err = (u_new - u).abs_().sum()
        u = u_new
        if bool(err < thresh):
            break
    return u, v


def _steps(
    k: torch.Tensor, kt: torch.Tensor, u: torch.Tensor, v: torch.Tensor, done: torch.Tensor, log_mu: float,
    log_nu: float, thresh: float, *, steps: int, release: bool, floor: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`steps` masked iterations with no host read: the body that torch.compile fuses."""
    for _ in range(steps):
        u_new = _potential(kt, v, log_mu, floor)
        v_new = _potential(k, u_new, log_nu, floor)
        if release:
            err = (u_new - u).abs().sum()
            u, v = torch.where(done, u, u_new), torch.where(done, v, v_new)
            done = done | (err < thresh)
        else:
            u, v = u_new, v_new
    return u, v, done


@functools.cache
def _compiled_steps(steps: int, release: bool, floor: float | None) -> Callable[..., tuple[torch.Tensor, ...]]:
    """torch.compile of `steps` unrolled iterations (one compiled graph per block length, rule and shape)."""
    return torch.compile(functools.partial(_steps, steps=steps, release=release, floor=floor), fullgraph=True,
                         dynamic=False)
