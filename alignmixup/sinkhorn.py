"""Batched log-domain Sinkhorn for entropic optimal transport between sets of spatial positions.

Stop rules (`stop`), each with its own tolerance and iteration cap (RULE_DEFAULTS, used where `tol` or
`max_iter` is None):
  - "release": the release's test, the batch mean of the L1 change of the row potential below `tol`
    (0.1), at most 100 iterations. It is absolute, so on mean-scaled costs it is loose at small eps (eps
    0.01 at N = 16 stopped after 4 or 5 iterations with rows of R off by 0.46 on average): not the
    tuning default.
  - "marginal": stop once the plan's rows are within `tol` (0.01) of their marginal: the mean over rows
    and batch of |R·1 - 1|, R = N * plan, at most 1000 iterations at the target eps. The columns are exact
    after every column update, so both marginals are then within tol. The test costs nothing: the next
    row update's change of potential is the row marginal error, N * rowsum_i = exp(u_i - u_new_i). With
    cost_scaling "mean" the iterations start from eps-scaling, 2 at each of eps * 2^J, ..., eps * 2
    (eps * 2^J <= 1, the mean cost), each warm-starting the next: at eps 0.01 on a trained model's
    features, 37 iterations instead of 87 at N = 16, 133 instead of 190 at N = 64, 240 instead of 273
    at N = 256 (benchmarks/README.md, "Sinkhorn convergence in tuning mode").
  - "fixed": exactly `max_iter` iterations (100).
  - "auto" (the default): "release" with cost_scaling "none", "marginal" with "mean".
The iterations, their count and the row marginal error of the returned plan stay on the device.

When the host reads the stop test (`check_every`): every iteration on a CPU, where the read is free;
every CUDA_CHECK_EVERY iterations elsewhere. Between reads, once the batch has converged further
iterations leave the potentials unchanged (masked update), so any check_every returns the plan of the
loop that checks every iteration, bit for bit, and the host-device synchronisations drop from one per
iteration (the release's `.item()`) to one per CUDA_CHECK_EVERY.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

StopRule = Literal["auto", "release", "marginal", "fixed"]
CostScaling = Literal["none", "mean"]

RULE_DEFAULTS: dict[str, tuple[float | None, int]] = {  # rule -> (tol, max_iter) when left None
    "release": (0.1, 100),
    "marginal": (1e-2, 1000),
    "fixed": (None, 100),
}
EXP_FLOOR = -80.0  # CPU: exponents are floored here (see _potential); exp(-80) is 1.8e-35
CUDA_CHECK_EVERY = 8  # host reads of the stop flag off the CPU: see benchmarks/README.md, "check every k"
COMPILE_BLOCK = 10  # iterations per compiled block when the host never reads the stop test
WARM_STEPS = 2  # eps-scaling: iterations at each doubled eps

Step = tuple[float, float, bool]  # (s: k's factor eps/eps_t, r: factor on the potentials first, test: stop test)


def resolve_rule(stop: StopRule, cost_scaling: CostScaling) -> str:
    """The stop rule that `stop` means with this cost scaling ('auto' follows the cost scaling)."""
    if stop == "auto":
        return "marginal" if cost_scaling == "mean" else "release"
    return stop


@dataclass(frozen=True)
class SinkhornResult:
    """A plan and how it was reached (tensors on the plan's device, read without a host sync)."""

    plan: torch.Tensor  # (B, N, M), rows summing to about 1/N, columns to 1/M
    iterations: torch.Tensor  # () int64: iterations the plan carries, eps-scaling warm-up included
    marginal_err: torch.Tensor  # () fp64: mean over rows and batch of |N * plan.sum(2) - 1|
    executed: int  # iterations the loop ran, masked ones and the marginal test's half step included
    reads: int  # host reads of the stop test (each a host-device synchronisation off the CPU)


class SinkhornStats:
    """Convergence of the aligned batches, accumulated on the device (no host sync in the step).

    Contract with the trainer: reset() at the start of each epoch; totals() is a float64 tensor on the
    device, [aligned_batches, iterations_sum, marginal_err_sum], to sum over DDP ranks (all_reduce) and turn
    into per-epoch figures with means(): the mean iterations per aligned batch and the mean row marginal
    error |R·1 - 1| (R = N * plan, averaged over rows and batch within a batch, then over aligned batches),
    both None when no batch was aligned.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Start counting from zero."""
        self._totals = torch.zeros(3, dtype=torch.float64, device=self.device)

    def add(self, result: SinkhornResult) -> None:
        """Count one aligned batch (three small device ops, no host read)."""
        self._totals[0] += 1.0
        self._totals[1] += result.iterations
        self._totals[2] += result.marginal_err

    def totals(self) -> torch.Tensor:
        """[aligned_batches, iterations_sum, marginal_err_sum], float64, a copy on the device."""
        return self._totals.clone()

    @staticmethod
    def means(totals: torch.Tensor) -> tuple[float | None, float | None]:
        """(mean iterations per aligned batch, mean marginal error) from (all-reduced) totals; None if none."""
        batches, iters, err = totals.tolist()
        return (None, None) if batches == 0 else (iters / batches, err / batches)


@contextlib.contextmanager
def ieee_fp32_matmul() -> Iterator[None]:
    """Matmuls at full fp32 inside (no TF32 on CUDA, no bf16 in oneDNN on a CPU), whatever the global
    flags; every flag is put back on exit.

    torch.set_float32_matmul_precision sets the legacy flag and the new per-backend fp32_precision together;
    setting only torch.backends.cuda.matmul.fp32_precision = "ieee" while the legacy flag says TF32 (the
    trainer's allow_tf32 = True) makes cuBLAS refuse to run ("mix of the legacy and new APIs", torch 2.9+).
    """
    cuda, onednn = torch.backends.cuda.matmul, torch.backends.mkldnn.matmul
    saved = torch.get_float32_matmul_precision(), cuda.fp32_precision, onednn.fp32_precision
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        cuda.fp32_precision, onednn.fp32_precision = saved[1], saved[2]


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances (B, N, M) between rows of x (B, N, D) and y (B, M, D), at full
    precision in x's dtype (no TF32); one (B, N, M) allocation and no (B, N, D) temporary."""
    x2 = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_()
    y2 = torch.linalg.vector_norm(y, dim=-1).square_().unsqueeze(-2)
    with ieee_fp32_matmul():
        return (x2 + y2).baddbmm_(x, y.transpose(1, 2), alpha=-2.0).clamp_min_(0.0)


def _neg_cost_over_eps(x: torch.Tensor, y: torch.Tensor, eps: float, cost_scaling: CostScaling) -> torch.Tensor:
    """-C/eps (B, N, M) in fp32 at least (fp64 kept), in one buffer; the fp32 copies of x and y die here."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    cost = squared_distances(x.to(dtype), y.to(dtype))
    if cost_scaling == "mean":
        cost.div_(cost.mean(dim=(1, 2), keepdim=True).clamp_min_(1e-12))
    elif cost_scaling != "none":
        raise ValueError(f"cost_scaling must be 'none' or 'mean' (got {cost_scaling!r})")
    return cost.div_(-eps)  # x / -eps rounds as -x / eps: the release's (-C + u + v) / eps


def _schedule(rule: str, cost_scaling: CostScaling, eps: float, max_iter: int) -> tuple[list[Step], int]:
    """Per-iteration (s, r, test) and the number of warm-up iterations (eps-scaling, marginal rule on mean costs).

    Potentials are kept in units of the current eps_t = eps / s; entering a stage of half the eps doubles them
    (r = 2, exact, as is s = 2^-j). The marginal test needs a column update at the target eps before it, so
    it starts at the second iteration there; the release's test runs from the first, as in the release.
    """
    stages = math.floor(math.log2(1.0 / eps)) if rule == "marginal" and cost_scaling == "mean" else 0
    steps: list[Step] = []
    for j in range(max(stages, 0), 0, -1):
        steps += [(2.0**-j, 1.0 if j == stages else 2.0, False)] + [(2.0**-j, 1.0, False)] * (WARM_STEPS - 1)
    warm = len(steps)
    for t in range(max_iter):
        test = rule == "release" or (rule == "marginal" and t > 0)
        steps.append((1.0, 2.0 if warm and t == 0 else 1.0, test))
    return steps, warm


@torch.no_grad()
def sinkhorn(
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 0.1,
    max_iter: int | None = None,
    *,
    stop: StopRule = "auto",
    tol: float | None = None,
    cost_scaling: CostScaling = "none",
    check_every: int | None = None,
    compiled: bool = False,
) -> SinkhornResult:
    """Entropic OT plan (B, N, M) between x (B, N, D) and y (B, M, D), uniform marginals 1/N and 1/M.

    Cost: squared Euclidean distance, computed in fp32 (fp64 inputs stay fp64) whatever the autocast state
    and the TF32 flags.
    cost_scaling:
      - "none": the release. eps is absolute on raw features; their squared distances are about 1e3,
        so with eps 0.1 the 100 iterations do not converge and the plan stays close to a hard
        assignment. The six published presets use it, to reproduce the paper.
      - "mean": each pair's cost is divided by its mean, so eps is relative and means the same thing
        whatever the feature scale. The tuning presets use it: the feature scale drifts during training
        and differs between stages, which would make an absolute eps meaningless to search.
    stop, tol, max_iter: the stop rule (module docstring); tol and max_iter None take the rule's own.
      max_iter counts iterations at the target eps; the eps-scaling warm-up comes on top.
    check_every: how often the host reads the convergence flag to leave the loop early; None: every
      iteration on a CPU, every CUDA_CHECK_EVERY iterations on other devices; 0: never (a fixed trip count).
    compiled: run the iterations as torch.compile'd blocks (check_every iterations, or COMPILE_BLOCK when
      the host never checks), each fused into a few kernels with no (B, N, M) temporary. It pays on CUDA,
      where the op-by-op loop is bound by kernel launches; each new shape, eps or block compiles once.

    The plan carries no gradient, as in the release (it is detached there).
    """
    if x.dim() != 3 or y.dim() != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"sinkhorn expects x (B, N, D) and y (B, M, D), got {tuple(x.shape)}, {tuple(y.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (got {eps})")
    rule = resolve_rule(stop, cost_scaling)
    if rule not in RULE_DEFAULTS:
        raise ValueError(f"stop must be one of auto, {', '.join(RULE_DEFAULTS)} (got {stop!r})")
    default_tol, default_iter = RULE_DEFAULTS[rule]
    tol = default_tol if tol is None else tol
    max_iter = default_iter if max_iter is None else max_iter
    if check_every is None:
        check_every = 1 if x.device.type == "cpu" else CUDA_CHECK_EVERY
    with torch.autocast(device_type=x.device.type, enabled=False):
        k = _neg_cost_over_eps(x, y, eps, cost_scaling)
        batch, n, m = k.shape
        steps, warm = _schedule(rule, cost_scaling, eps, max_iter)
        # release: mean_b sum_i |f_new - f| < tol, in units of eps and summed over the batch; marginal: as is
        thresh = tol * batch / eps if rule == "release" else (tol if rule == "marginal" else 0.0)
        loop = _Loop(rule, thresh, -math.log(n), -math.log(m), EXP_FLOOR if k.device.type == "cpu" else None)
        if check_every == 1 and not compiled:
            u, v, iterations, executed, reads = loop.host_checked(k, steps)
        else:
            u, v, iterations, executed, reads = loop.blocks(k, steps, warm, check_every, compiled)
        # in place: k + u rounds exactly as the last column update did, so the columns sum to 1/M to rounding
        plan = k.add_(u.unsqueeze(2)).add_(v.unsqueeze(1)).exp_()
        # row sums in the plan's dtype (sum(dtype=float64) would copy the whole plan to fp64 on a CPU: 2 more S of
        # peak memory), the error from them in fp64, so a converged 1e-7 is not lost to cancellation
        marginal_err = plan.sum(2).double().mul_(n).sub_(1.0).abs_().mean()
    return SinkhornResult(plan, iterations, marginal_err, executed, reads)


def sinkhorn_plan(x: torch.Tensor, y: torch.Tensor, eps: float = 0.1, max_iter: int | None = None, *,
                  stats: SinkhornStats | None = None, **options: Any) -> torch.Tensor:
    """The plan of `sinkhorn` (the same arguments and keyword options: stop, tol, cost_scaling, check_every,
    compiled); its iterations and marginal error go to `stats` if given."""
    result = sinkhorn(x, y, eps, max_iter, **options)
    if stats is not None:
        stats.add(result)
    return result.plan


def _potential(
    k: torch.Tensor, w: torch.Tensor, dim: int, s: float, log_a: float, floor: float | None,
    buf: torch.Tensor | None,
) -> torch.Tensor:
    """log_a - logsumexp over `dim` of s*k + w (w indexed by the other dim): one Sinkhorn half-step, in eps units.

    dim 2 gives the row potential (B, N), dim 1 the column one (B, M); both reduce the same (B, N, M) tensor,
    written into `buf` (one buffer for the whole loop; None: a fresh one, which torch.compile fuses away).
    On a CPU the exponent is floored at EXP_FLOOR after the max is taken out: the vectorised exp takes a slow
    path (about 15x) on arguments that underflow, which raw-scale costs over a small eps produce in bulk, and
    after the shift the largest term is exp(0) = 1, so terms under exp(-80) cannot change the sum in fp32 or fp64.
    """
    t = torch.add(w.unsqueeze(3 - dim), k, alpha=s, out=buf)
    top = t.amax(dim=dim, keepdim=True)
    t.sub_(top)
    if floor is not None:
        t.clamp_min_(floor)
    return t.exp_().sum(dim=dim).log_().add_(top.squeeze(dim)).neg_().add_(log_a)


@dataclass(frozen=True)
class _Loop:
    """The iterations of one rule: host-checked (CPU), or blocks of masked iterations (eager or compiled)."""

    rule: str
    thresh: float
    log_mu: float
    log_nu: float
    floor: float | None

    def host_checked(self, k: torch.Tensor, steps: list[Step]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """The host reads the stop test every iteration (the release's loop), so no masking is needed."""
        buf = torch.empty_like(k)
        u = k.new_zeros(k.shape[0], k.shape[1])
        v = k.new_zeros(k.shape[0], k.shape[2])
        iterations = reads = 0
        for s, r, test in steps:
            if r != 1.0:
                u, v = u.mul_(r), v.mul_(r)
            u_new = _potential(k, v, 2, s, self.log_mu, self.floor, buf)
            reads += test
            if test and self.rule == "marginal" and bool(torch.expm1(u - u_new).abs_().mean() <= self.thresh):
                # (u, v) is the plan that passed; u_new was the half step of the test
                return u, v, torch.tensor(iterations, device=k.device), iterations + 1, reads
            v = _potential(k, u_new, 1, s, self.log_nu, self.floor, buf)
            iterations += 1
            converged = test and self.rule == "release" and bool((u_new - u).abs_().sum() < self.thresh)
            u = u_new
            if converged:
                break
        return u, v, torch.tensor(iterations, device=k.device), iterations, reads

    def blocks(self, k: torch.Tensor, steps: list[Step], warm: int, check_every: int, compiled: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """Blocks of masked iterations, the host reading the flag between blocks (never if check_every is 0).

        The warm-up is one block (it has no test); then blocks of check_every (or COMPILE_BLOCK compiled, or all).
        """
        checks = check_every > 0 and self.rule != "fixed"
        block = check_every if checks else (COMPILE_BLOCK if compiled else max(len(steps), 1))
        bounds = ([0] if warm else []) + list(range(warm, len(steps), block)) + [len(steps)]
        buf = None if compiled else torch.empty_like(k)
        u = k.new_zeros(k.shape[0], k.shape[1])
        v = k.new_zeros(k.shape[0], k.shape[2])
        done = torch.zeros((), dtype=torch.bool, device=k.device)
        count = torch.zeros((), dtype=torch.int64, device=k.device)
        executed = reads = 0
        for start, end in itertools.pairwise(bounds):
            chunk = tuple(steps[start:end])
            run = _compiled_block(self, chunk) if compiled else functools.partial(self.masked, steps=chunk, buf=buf)
            u, v, done, count = run(k, u, v, done, count)
            executed = end
            if checks and start >= warm:
                reads += 1
                if bool(done):
                    break
        return u, v, count, executed, reads

    def masked(self, k: torch.Tensor, u: torch.Tensor, v: torch.Tensor, done: torch.Tensor, count: torch.Tensor,
               *, steps: tuple[Step, ...], buf: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Iterations with no host read: a converged batch keeps its potentials (the body torch.compile fuses)."""
        for s, r, test in steps:
            if r != 1.0:  # only before any test (schedule): done is still False
                u, v = u * r, v * r
            u_new = _potential(k, v, 2, s, self.log_mu, self.floor, buf)
            if test and self.rule == "marginal":
                done = done | (torch.expm1(u - u_new).abs_().mean() <= self.thresh)
            if self.rule == "fixed":  # nothing to mask
                u, v, count = u_new, _potential(k, u_new, 1, s, self.log_nu, self.floor, buf), count + 1
                continue
            active = ~done
            u_next = torch.where(done, u, u_new)
            v = torch.where(done, v, _potential(k, u_next, 1, s, self.log_nu, self.floor, buf))
            if test and self.rule == "release":
                done = done | ((u_new - u).abs_().sum() < self.thresh)
            u, count = u_next, count + active
        return u, v, done, count


@functools.cache
def _compiled_block(loop: _Loop, steps: tuple[Step, ...]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """torch.compile of a block of unrolled iterations (one graph per rule, block and shape)."""
    return torch.compile(functools.partial(loop.masked, steps=steps, buf=None), fullgraph=True, dynamic=False)
