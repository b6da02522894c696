"""Batched log-domain Sinkhorn for entropic optimal transport between sets of spatial positions.

The release (AlignMixup, CVPR 2022) runs this loop with a `.item()` per iteration for its stopping
test. Here the stopping rule is evaluated on the device: once the batch has converged, further
iterations leave the potentials unchanged (masked update), so the plan is the one the release's loop
returns while the host only looks at the flag every `check_every` iterations (every iteration on a
CPU, where reading it costs nothing; never on CUDA by default, a fixed trip count that can be
captured by CUDA graphs or `torch.compile`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

StopRule = Literal["release", "fixed"]
CostScaling = Literal["none", "mean"]


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
        return _sinkhorn_log(cost, eps, max_iter, stop, tol, check_every)


def _sinkhorn_log(
    cost: torch.Tensor, eps: float, max_iter: int, stop: StopRule, tol: float, check_every: int
) -> torch.Tensor:
    """Log-domain iterations on the potentials f (B, N) and g (B, M), which are in cost units."""
    batch, n, m = cost.shape
    log_mu, log_nu = -math.log(n), -math.log(m)
    neg_c = cost.neg().div_(eps)  # -C/eps, reused by every iteration
    f = cost.new_zeros(batch, n)
    g = cost.new_zeros(batch, m)
    done = torch.zeros((), dtype=torch.bool, device=cost.device)
    release = stop == "release"
    for it in range(max_iter):
        f_new = eps * (log_mu - torch.logsumexp(neg_c + g.unsqueeze(1) / eps, dim=2))
        g_new = eps * (log_nu - torch.logsumexp(neg_c + f_new.unsqueeze(2) / eps, dim=1))
        if release:
            f_new = torch.where(done, f, f_new)
            g_new = torch.where(done, g, g_new)
            err = (f_new - f).abs().sum(-1).mean()
            done = done | (err < tol)
        f, g = f_new, g_new
        if release and check_every and (it + 1) % check_every == 0 and bool(done):
            break
    return torch.exp(neg_c + (f.unsqueeze(2) + g.unsqueeze(1)) / eps)
