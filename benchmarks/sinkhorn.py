"""Sinkhorn: ours vs a loop in the release's style vs POT, per number of positions N: time and marginal error.

All candidates solve the same problems: x = relu(randn(B, N, D)) (raw-scale features, squared distances of
about 1e3), y = x[perm], squared-Euclidean cost (the same `squared_distances` for all, inside the timing),
eps 0.1, uniform marginals, the same number of iterations (the release's rule does not stop within 100
iterations on raw features; the table's `iters` column says how many the reference ran).

    python -m benchmarks.sinkhorn --sizes 16 64 256:10 --rounds 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from alignmixup.sinkhorn import sinkhorn_plan, squared_distances
from benchmarks._machine import add_common_args, interleaved, paired_ratio, print_table, save, setup, stats, sync


def release_loop(cost: torch.Tensor, eps: float, max_iter: int, tol: float = 0.1) -> tuple[torch.Tensor, int]:
    """The release's SinkhornDistance iterations (as tests/test_alignmixup_sinkhorn.py restates them): u/v
    potentials in cost units, `.item()` stop test on every iteration. Returns the plan and the iterations run."""
    b, n, m = cost.shape
    mu = torch.full((b, n), 1.0 / n, dtype=cost.dtype, device=cost.device)
    nu = torch.full((b, m), 1.0 / m, dtype=cost.dtype, device=cost.device)
    u, v = torch.zeros_like(mu), torch.zeros_like(nu)

    def logits(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (-cost + u.unsqueeze(-1) + v.unsqueeze(-2)) / eps

    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - `it` is the count returned
        u1 = u
        u = eps * (torch.log(mu) - torch.logsumexp(logits(u, v), dim=-1)) + u
        v = eps * (torch.log(nu) - torch.logsumexp(logits(u, v).transpose(-2, -1), dim=-1)) + v
        if (u - u1).abs().sum(-1).mean().item() < tol:
            break
    return torch.exp(logits(u, v)), it


def pot_batch(cost: torch.Tensor, eps: float, max_iter: int) -> torch.Tensor:
    """POT's batched log-domain Sinkhorn (ot.batch, torch backend, same device), exactly max_iter iterations."""
    from ot.batch import solve_batch

    return solve_batch(cost, reg=eps, max_iter=max_iter, tol=0.0, method="log_sinkhorn", grad="detach").plan


def marginal_error(plan: torch.Tensor) -> float:
    """Batch mean of the L1 errors of both marginals against 1/N and 1/M (fp64)."""
    p = plan.double()
    _, n, m = p.shape
    rows = (p.sum(2) - 1.0 / n).abs().sum(1)
    cols = (p.sum(1) - 1.0 / m).abs().sum(1)
    return float((rows + cols).mean())


def parse_size(text: str, default_iters: int) -> tuple[int, int]:
    """'64' -> (64, default_iters); '256:10' -> (256, 10)."""
    n, _, iters = text.partition(":")
    return int(n), int(iters) if iters else default_iters


def candidates(x: torch.Tensor, y: torch.Tensor, eps: float, iters: int, compiled: bool, pot: bool
               ) -> dict[str, Callable[[], torch.Tensor]]:
    """The solvers, each a closure from the features to the plan."""
    fns: dict[str, Callable[[], torch.Tensor]] = {
        "reference": lambda: release_loop(squared_distances(x, y), eps, iters)[0],
        "ours": lambda: sinkhorn_plan(x, y, eps=eps, max_iter=iters),
    }
    if compiled:
        fns["ours_compiled"] = lambda: sinkhorn_plan(x, y, eps=eps, max_iter=iters, compiled=True)
    if pot:
        fns["pot_batch"] = lambda: pot_batch(squared_distances(x, y), eps, iters)
    return fns


def run_size(n: int, iters: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Time every candidate at N positions and measure its plan."""
    gen = torch.Generator(device="cpu").manual_seed(n)
    x = torch.relu(torch.randn(args.batch, n, args.channels, generator=gen)).to(device) * args.scale
    y = x[torch.randperm(args.batch, generator=gen).to(device)]
    fns = candidates(x, y, args.eps, iters, not args.no_compile, not args.no_pot)
    compile_s = None
    if "ours_compiled" in fns:  # the first call compiles: timed apart, not part of the medians
        sync(device)
        t0 = time.perf_counter()
        fns["ours_compiled"]()
        sync(device)
        compile_s = time.perf_counter() - t0
    times = interleaved(fns, device, args.rounds, warmup=1)
    ref_plan, ref_iters = release_loop(squared_distances(x, y), args.eps, iters)
    exact, _ = release_loop(squared_distances(x.double(), y.double()), args.eps, ref_iters)  # the fp64 oracle
    rows = []
    for name, fn in fns.items():
        plan = fn()
        rows.append({
            "N": n, "method": name, "iters": ref_iters if name == "reference" else iters,
            "median_ms": 1e3 * stats(times[name])["median"], "min_ms": 1e3 * min(times[name]),
            "speedup_vs_ref": paired_ratio(times["reference"], times[name]),
            "marginal_err": marginal_error(plan), "max_abs_diff_vs_ref": float((plan - ref_plan).abs().max()),
            "max_abs_err_vs_fp64": float((plan.double() - exact).abs().max()),
            "compile_s": compile_s if name == "ours_compiled" else None, "times_s": times[name],
        })
    return rows


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run every size, print the table and save the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["16", "64", "256"],
                        help="positions N, optionally N:ITERS to override --iters for that size")
    parser.add_argument("--iters", type=int, default=100, help="Sinkhorn iterations (the release's cap)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--scale", type=float, default=1.0, help="feature scale (1: raw, costs about 1e3)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd variant")
    parser.add_argument("--no-pot", action="store_true", help="skip POT")
    add_common_args(parser)
    args = parser.parse_args(argv)
    device = setup(args)
    rows = []
    for text in args.sizes:
        n, iters = parse_size(text, args.iters)
        rows += run_size(n, iters, args, device)
        print_table([r for r in rows if r["N"] == n],
                    ["N", "method", "iters", "median_ms", "min_ms", "speedup_vs_ref", "marginal_err",
                     "max_abs_diff_vs_ref", "max_abs_err_vs_fp64", "compile_s"])
    notes = [
        f"{args.rounds} interleaved rounds per size (candidate order rotated), medians; speedup_vs_ref is the "
        "median over rounds of t_reference / t_method",
        "ours: alignmixup.sinkhorn.sinkhorn_plan defaults (release stop rule; CPU reads the stop flag every "
        "iteration, CUDA never); ours_compiled: compiled=True (torch.compile'd blocks); compile time apart",
        "reference: the release's loop (per-iteration .item() stop test) given the same cost matrix",
        "max_abs_err_vs_fp64: against the release's loop run in fp64 for the same iterations (the oracle)",
    ]
    save("sinkhorn", device, args, rows, notes)


if __name__ == "__main__":
    main()
