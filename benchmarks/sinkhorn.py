"""Sinkhorn benchmarks, three suites (`--suite`):

speed (default): ours vs a loop in the release's style vs POT, per number of positions N: time and marginal
  error. All candidates solve the same problems: x = relu(randn(B, N, D)) (raw-scale features, squared
  distances of about 1e3), y = x[perm], squared-Euclidean cost (the same `squared_distances` for all, inside
  the timing), eps 0.1, uniform marginals, the same number of iterations (the release's rule does not stop
  within 100 iterations on raw features; the table's `iters` column says how many the reference ran).

    python -m benchmarks.sinkhorn --sizes 16 64 256:10 --rounds 5

convergence: on the feature maps of a PreActResNet-18 trained on digits (after stages 4, 3, 2: N = 16, 64,
  256; each sample paired with a random partner as the mixer does), with cost_scaling "mean", per eps:
  iterations, time per plan and the marginal errors reached by the default stopping ("auto": the marginal
  rule with its eps-scaling warm start), by the same rule without the warm start, and by the release's rule.

    python -m benchmarks.sinkhorn --suite convergence --batch 64 --batches 4 --rounds 3

check_every: the same problems (and raw-scale ones for the release's rule), solved with the host reading the
  stop flag every k iterations as on CUDA: iterations run vs the rule's, host reads, and the overhead model
  that chose CUDA_CHECK_EVERY.

    python -m benchmarks.sinkhorn --suite check_every --batch 64 --batches 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from alignmixup.config import TrainConfig
from alignmixup.sinkhorn import CUDA_CHECK_EVERY, SinkhornResult, sinkhorn, sinkhorn_plan, squared_distances
from alignmixup.trainer import Trainer
from benchmarks._machine import add_common_args, interleaved, paired_ratio, print_table, save, setup, stats, sync
from benchmarks.memory import previous_plan

EPS_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
STAGES = (4, 3, 2)  # N = 16, 64, 256 at 32x32 inputs


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
        "previous": lambda: previous_plan(x, y, eps, iters, "none"),
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


def trained_stage_features(width: float, epochs: int, batch: int, batches: int, stages: tuple[int, ...] = STAGES,
                           threads: int | None = None) -> dict[int, list[torch.Tensor]]:
    """Feature maps (B, C, H, W) after the given stages of a PreActResNet-18 trained on digits for `epochs`
    (32x32 inputs: N = 1024, 256, 64, 16 after stages 1 to 4), for `batches` augmented training batches, in
    training mode as the mixer sees them (batch statistics)."""
    tr = Trainer(TrainConfig(dataset="digits", width=width, epochs=epochs, batch_size=64, lr=0.05,
                             lr_schedule="cosine", threads=threads, seed=1, eval_test="never", device="cpu"))
    tr.fit()
    idx = tr.train_indices(0)
    out: dict[int, list[torch.Tensor]] = {k: [] for k in stages}
    with torch.no_grad():
        for i in range(batches):
            x, _ = tr.data.train.batch(idx[i * batch:(i + 1) * batch], train=True)
            h = tr.model.stem(x)
            for k, stage in enumerate(tr.model.stages, start=1):
                h = stage(h)
                if k in out:
                    out[k].append(h.float())
    return out


def positions_and_partners(h: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, C) positions of a feature map and those of a random partner per sample, as the mixer pairs them."""
    b, c, hh, ww = h.shape
    a = h.permute(0, 2, 3, 1).reshape(b, hh * ww, c)
    return a, a[torch.randperm(b, generator=torch.Generator().manual_seed(seed))]


def plan_errors(plan: torch.Tensor) -> dict[str, float]:
    """Row and column marginal errors of R = N * plan (fp64): means over rows (columns) and batch, and the
    worst pair's mean row error."""
    r = plan.double() * plan.shape[1]
    rows, cols = (r.sum(2) - 1).abs(), (r.sum(1) - 1).abs()
    return {"row_err": float(rows.mean()), "worst_pair_row_err": float(rows.mean(1).max()),
            "col_err": float(cols.mean())}


def convergence_candidates(a: torch.Tensor, p: torch.Tensor, eps: float) -> dict[str, Callable[[], SinkhornResult]]:
    """The default stopping of mean-scaled costs, the same rule without eps-scaling, and the release's rule.

    Without eps-scaling: the features divided by the square root of each pair's mean cost with cost_scaling
    "none" (no warm start there) pose the same problem (C / mean C, to rounding) to the plain marginal rule."""
    scale = squared_distances(a, p).mean(dim=(1, 2), keepdim=True).sqrt_()
    a_n, p_n = a / scale, p / scale
    return {
        "auto (marginal, eps-scaling)": lambda: sinkhorn(a, p, eps, cost_scaling="mean"),
        "marginal, no eps-scaling": lambda: sinkhorn(a_n, p_n, eps, stop="marginal", cost_scaling="none"),
        "release rule": lambda: sinkhorn(a, p, eps, stop="release", cost_scaling="mean"),
    }


def run_convergence(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Per stage and eps: iterations and errors averaged over the batches, time per plan on the first one."""
    feats = trained_stage_features(args.width, args.epochs, args.batch, args.batches, threads=args.threads)
    rows = []
    for stage in STAGES:
        pairs = [positions_and_partners(h.to(device), seed=i) for i, h in enumerate(feats[stage])]
        for eps in EPS_GRID:
            per_batch = [convergence_candidates(a, p, eps) for a, p in pairs]
            times = interleaved(per_batch[0], device, args.rounds, warmup=1)
            for name in per_batch[0]:
                results = [fns[name]() for fns in per_batch]
                errs = [plan_errors(r.plan) for r in results]
                rows.append({
                    "stage": stage, "N": pairs[0][0].shape[1], "eps": eps, "method": name,
                    "iters": statistics.mean(int(r.iterations) for r in results),
                    "iters_max": max(int(r.iterations) for r in results),
                    "median_ms": 1e3 * stats(times[name])["median"],
                    "row_err": statistics.mean(e["row_err"] for e in errs),
                    "row_err_max": max(e["row_err"] for e in errs),
                    "worst_pair_row_err": max(e["worst_pair_row_err"] for e in errs),
                    "col_err": statistics.mean(e["col_err"] for e in errs), "times_s": times[name],
                })
            print_table(rows[-3:], ["N", "eps", "method", "iters", "iters_max", "median_ms", "row_err", "row_err_max",
                                    "worst_pair_row_err", "col_err"])
    return rows


CHECK_EVERY = (1, 2, 4, 8, 16, 32)
READ_COSTS = (0.1, 0.3, 1.0, 3.0)  # one host read in units of one iteration: launch-bound eager to compiled


def run_check_every(args: argparse.Namespace, device: torch.device) -> dict:
    """Every problem solved with the host reading the flag every k iterations: iterations run, reads, and the
    model overhead(k) = rho * reads + (run - needed) iterations, for read costs rho (in iterations)."""
    feats = trained_stage_features(args.width, args.epochs, args.batch, args.batches, threads=args.threads)
    problems = []  # (rule, scaling, stage, eps, a, p)
    for stage in STAGES:
        for i, h in enumerate(feats[stage]):
            a, p = positions_and_partners(h.to(device), seed=i)
            for eps in EPS_GRID:
                problems += [("release", "none", stage, eps, a, p), ("marginal", "mean", stage, eps, a, p)]
    rows, per_problem = [], []
    for rule, scaling, stage, eps, a, p in problems:
        ref = sinkhorn(a, p, eps, stop=rule, cost_scaling=scaling, check_every=1)
        needed = int(ref.iterations)
        entry = {"rule": rule, "stage": stage, "eps": eps, "iterations": needed, "runs": {}}
        for k in CHECK_EVERY:
            res = sinkhorn(a, p, eps, stop=rule, cost_scaling=scaling, check_every=k)
            if not torch.equal(res.plan, ref.plan):
                raise SystemExit(f"check_every={k} changed the plan ({rule}, stage {stage}, eps {eps})")
            entry["runs"][k] = {"executed": res.executed, "reads": res.reads}
        per_problem.append(entry)
    for rule in ("release", "marginal"):
        mine = [e for e in per_problem if e["rule"] == rule]
        needed = [e["iterations"] for e in mine]
        for k in CHECK_EVERY:
            run = statistics.mean(e["runs"][k]["executed"] for e in mine)
            reads = statistics.mean(e["runs"][k]["reads"] for e in mine)
            row = {"rule": rule, "k": k, "problems": len(mine), "needed_mean": statistics.mean(needed),
                   "needed_min": min(needed), "needed_max": max(needed), "run_mean": run,
                   "extra_iters": run - statistics.mean(e["runs"][1]["executed"] for e in mine), "reads_mean": reads}
            for rho in READ_COSTS:
                row[f"overhead_rho{rho}"] = rho * reads + row["extra_iters"]
            rows.append(row)
    print_table(rows, ["rule", "k", "problems", "needed_mean", "needed_min", "needed_max", "run_mean", "extra_iters",
                       "reads_mean", *(f"overhead_rho{rho}" for rho in READ_COSTS)])
    return {"summary": rows, "iterations": per_problem,
            "cuda_check_every": CUDA_CHECK_EVERY}


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the suite, print the table and save the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="speed", choices=["speed", "convergence", "check_every"])
    parser.add_argument("--sizes", nargs="+", default=["16", "64", "256"],
                        help="speed: positions N, optionally N:ITERS to override --iters for that size")
    parser.add_argument("--iters", type=int, default=100, help="speed: Sinkhorn iterations (the release's cap)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--channels", type=int, default=512, help="speed: feature channels")
    parser.add_argument("--eps", type=float, default=0.1, help="speed: eps")
    parser.add_argument("--scale", type=float, default=1.0, help="speed: feature scale (1: raw, costs about 1e3)")
    parser.add_argument("--no-compile", action="store_true", help="speed: skip the torch.compile'd variant")
    parser.add_argument("--no-pot", action="store_true", help="speed: skip POT")
    parser.add_argument("--batches", type=int, default=4, help="convergence, check_every: feature batches")
    parser.add_argument("--width", type=float, default=0.25, help="convergence, check_every: the trained model's")
    parser.add_argument("--epochs", type=int, default=3, help="convergence, check_every: its training epochs")
    add_common_args(parser)
    args = parser.parse_args(argv)
    device = setup(args)
    if args.suite != "speed":
        args.tag = args.tag or args.suite.replace("_", "-")
        results = run_convergence(args, device) if args.suite == "convergence" else run_check_every(args, device)
        notes = [
            f"features: PreActResNet-18 width {args.width} trained {args.epochs} epochs on digits (32x32), after "
            f"stages {STAGES} (N = 16, 64, 256), {args.batches} training batches of {args.batch}, in training mode; "
            "each sample paired with a random partner",
            "iters: iterations the plan carries (eps-scaling warm-up included); row_err: mean |R·1 - 1| over rows "
            "and batch (R = N * plan), averaged over batches; worst_pair_row_err: the worst pair's mean row error",
            "check_every: run = iterations executed (masked ones included), reads = host reads of the stop flag; "
            "overhead_rhoX = X * reads + extra iterations vs k = 1, in iterations (X: a read's cost in iterations)",
        ]
        save("sinkhorn", device, args, results, notes)
        return
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
        f"iteration, CUDA every {CUDA_CHECK_EVERY}); ours_compiled: compiled=True (torch.compile'd blocks); "
        "compile time apart",
        "reference: the release's loop (per-iteration .item() stop test) given the same cost matrix; previous: "
        "sinkhorn_plan as of commit 87b7db0 (benchmarks.memory.previous_plan), the CPU speed to keep",
        "max_abs_err_vs_fp64: against the release's loop run in fp64 for the same iterations (the oracle)",
    ]
    save("sinkhorn", device, args, rows, notes)


if __name__ == "__main__":
    main()
