"""Sinkhorn: convergence, agreement with POT and with the release's loop, permutations, stability, the stop
rules on a trained model's features, host reads every k iterations, statistics and full-fp32 costs."""

import math

import numpy as np
import ot
import pytest
import torch

from alignmixup.config import SinkhornConfig, TrainConfig
from alignmixup.presets import PUBLISHED_RECIPES
from alignmixup.sinkhorn import SinkhornStats, sinkhorn, sinkhorn_plan, squared_distances
from benchmarks.sinkhorn import positions_and_partners, trained_stage_features

EPS_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)


def release_loop(x: torch.Tensor, y: torch.Tensor, eps: float = 0.1, max_iter: int = 100) -> tuple[torch.Tensor, int]:
    """The release's SinkhornDistance.forward, restated: u/v potentials, `.item()` stop test per iteration.
    Returns the plan and the iterations run."""
    cost = ((x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2).sum(-1)
    mu = torch.full(x.shape[:2], 1.0 / x.shape[1], dtype=x.dtype)
    nu = torch.full(y.shape[:2], 1.0 / y.shape[1], dtype=x.dtype)
    u, v = torch.zeros_like(mu), torch.zeros_like(nu)

    def m(u, v):
        return (-cost + u.unsqueeze(-1) + v.unsqueeze(-2)) / eps

    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - `it` is returned
        u1 = u
        u = eps * (torch.log(mu) - torch.logsumexp(m(u, v), dim=-1)) + u
        v = eps * (torch.log(nu) - torch.logsumexp(m(u, v).transpose(-2, -1), dim=-1)) + v
        if (u - u1).abs().sum(-1).mean().item() < 0.1:
            break
    return torch.exp(m(u, v)), it


def features(b: int, n: int, d: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(b, n, d, generator=g)) * scale


def test_squared_distances_match_direct_formula():
    x, y = features(2, 5, 7, 0), features(2, 4, 7, 1)
    direct = ((x.unsqueeze(2) - y.unsqueeze(1)) ** 2).sum(-1)
    torch.testing.assert_close(squared_distances(x, y), direct, rtol=1e-5, atol=1e-4)


def test_marginals_once_converged():
    x, y = features(4, 16, 8, 0), features(4, 12, 8, 1)
    plan = sinkhorn_plan(x, y, eps=0.05, max_iter=2000, stop="release", tol=1e-7, cost_scaling="mean")
    assert plan.shape == (4, 16, 12)
    assert (plan.sum(2) - 1 / 16).abs().max() < 1e-4
    assert (plan.sum(1) - 1 / 12).abs().max() < 1e-4


@pytest.mark.parametrize("eps", [0.05, 0.2, 1.0])
def test_plan_matches_pot(eps):
    x, y = features(3, 9, 6, 2), features(3, 7, 6, 3)
    plan = sinkhorn_plan(x.double(), y.double(), eps=eps, max_iter=3000, stop="fixed", cost_scaling="mean")
    for i in range(3):
        cost = ot.dist(x[i].double().numpy(), y[i].double().numpy())  # squared Euclidean
        cost /= cost.mean()
        ref = ot.sinkhorn(np.full(9, 1 / 9), np.full(7, 1 / 7), cost, eps, method="sinkhorn_log",
                          numItermax=20000, stopThr=1e-12)
        np.testing.assert_allclose(plan[i].numpy(), ref, atol=2e-6, rtol=1e-3)


def test_release_rule_equals_the_release_loop():
    # small scale so the release's rule stops early: the same iteration count gives the same plan
    x, y = features(8, 16, 32, 4, scale=0.05), features(8, 16, 32, 5, scale=0.05)
    ours = sinkhorn(x, y, eps=0.1, max_iter=100)
    plan, iterations = release_loop(x, y)
    assert int(ours.iterations) == iterations < 100
    torch.testing.assert_close(ours.plan, plan, rtol=1e-4, atol=1e-7)
    # and on raw scale, where 100 iterations do not converge (fp64: costs / eps of 1e4 amplify rounding)
    x, y = features(4, 16, 512, 6).double(), features(4, 16, 512, 7).double()
    torch.testing.assert_close(sinkhorn_plan(x, y), release_loop(x, y)[0], rtol=1e-6, atol=1e-9)


def test_small_eps_recovers_a_spatial_permutation():
    n = 16
    x = features(5, n, 32, 8)
    perms = [torch.randperm(n, generator=torch.Generator().manual_seed(s)) for s in range(5)]
    y = torch.stack([x[b, p] for b, p in enumerate(perms)])  # y[b, j] = x[b, perm[j]]
    assign = n * sinkhorn_plan(x, y, eps=0.01, max_iter=500, stop="fixed", cost_scaling="mean")
    for b, p in enumerate(perms):
        expected = torch.zeros(n, n)
        expected[p, torch.arange(n)] = 1.0  # position perm[j] of x goes to position j of y
        torch.testing.assert_close(assign[b], expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("stop", ["release", "fixed"])
@pytest.mark.parametrize("scaling", ["none", "mean"])
def test_no_nan_across_eps_on_raw_features(stop, scaling):
    x, y = features(16, 16, 512, 9, scale=1.5), features(16, 16, 512, 10, scale=1.5)
    assert squared_distances(x, y).mean() > 500  # raw features: costs of order 1e3
    for eps in np.logspace(-3, 1, 9):
        plan = sinkhorn_plan(x, y, eps=float(eps), max_iter=100, stop=stop, cost_scaling=scaling)
        assert torch.isfinite(plan).all(), eps
        # total mass 1; with absolute eps 1e-3 on costs of 1e3, fp32 exponents of 1e6 cost about a percent
        assert math.isclose(plan.sum(dim=(1, 2)).mean().item(), 1.0, rel_tol=1e-3 if scaling == "mean" else 2e-2), eps


def test_plan_has_no_gradient_and_bad_eps_is_refused():
    x = features(2, 4, 3, 11).requires_grad_()
    assert not sinkhorn_plan(x, x.detach()).requires_grad
    with pytest.raises(ValueError, match="eps"):
        sinkhorn_plan(x, x, eps=0.0)


@pytest.mark.parametrize("stop", ["release", "marginal", "fixed"])
def test_masked_blocks_and_compiled_blocks_give_the_host_checked_plan(stop):
    """Reading the stop flag every k iterations (or never: masked on the device), eager or torch.compile'd,
    returns the plan of the loop that checks on the host every iteration (marginal: after the eps-scaling
    warm-up of mean-scaled costs)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.relu(torch.randn(6, 9, 12, generator=gen))
    y = x[:, torch.randperm(9, generator=gen)]
    kwargs = dict(eps=0.5, max_iter=23, stop=stop)
    if stop == "marginal":  # 8 warm-up iterations (eps 0.8 to 0.1), stops after 13 more
        y = torch.relu(torch.randn(6, 9, 12, generator=gen))
        kwargs = dict(eps=0.05, max_iter=40, stop=stop, tol=1e-2, cost_scaling="mean")
    every = sinkhorn(x, y, check_every=1, compiled=False, **kwargs)
    assert int(every.iterations) == {"release": 2, "marginal": 21, "fixed": 23}[stop]
    for check_every in (0, 4):
        assert torch.equal(sinkhorn_plan(x, y, check_every=check_every, compiled=False, **kwargs), every.plan)
    compiled = sinkhorn(x, y, check_every=0, compiled=True, **kwargs)
    torch.testing.assert_close(compiled.plan, every.plan, rtol=1e-5, atol=1e-7)
    assert int(compiled.iterations) == int(every.iterations)


def row_col_errors(plan: torch.Tensor) -> tuple[float, float]:
    """Mean |R·1 - 1| over rows and over columns (and batch) of R = N * plan, in fp64."""
    r = plan.double() * plan.shape[1]
    return float((r.sum(2) - 1).abs().mean()), float((r.sum(1) - 1).abs().mean())


def marginal_loop(cost: torch.Tensor, eps: float, tol: float, max_iter: int) -> tuple[torch.Tensor, int]:
    """Plain log-domain Sinkhorn that measures the plan's row sums after every iteration (after its first)
    and stops once their batch-mean error |R·1 - 1| is within tol; returns the plan and the iterations."""
    n, m = cost.shape[1:]
    f = cost.new_zeros(cost.shape[:2])
    g = cost.new_zeros(cost.shape[0], m)

    def plan() -> torch.Tensor:
        return torch.exp((f.unsqueeze(2) + g.unsqueeze(1) - cost) / eps)

    for it in range(max_iter):
        if it > 0 and (plan().sum(2) * n - 1).abs().mean() <= tol:
            return plan(), it
        f = -eps * torch.logsumexp((g.unsqueeze(1) - cost) / eps, dim=2) - eps * math.log(n)
        g = -eps * torch.logsumexp((f.unsqueeze(2) - cost) / eps, dim=1) - eps * math.log(m)
    return plan(), max_iter


@pytest.fixture(scope="module")
def trained() -> dict[int, torch.Tensor]:
    """Feature maps after stages 2, 3 and 4 (N = 256, 64, 16) of a tiny PreActResNet-18 trained 2 epochs on
    digits, one training batch of 64."""
    return {stage: maps[0] for stage, maps in trained_stage_features(0.125, 2, 64, 1, (2, 3, 4), threads=2).items()}


@pytest.mark.parametrize("stage", [2, 3, 4])
def test_mean_scaling_default_stop_reaches_the_marginals_on_trained_features(trained, stage):
    a, p = positions_and_partners(trained[stage], seed=stage)
    assert a.shape == (64, {2: 256, 3: 64, 4: 16}[stage], {2: 16, 3: 32, 4: 64}[stage])
    for eps in EPS_GRID:
        res = sinkhorn(a, p, eps, cost_scaling="mean")  # default stop: auto -> marginal
        rows, cols = row_col_errors(res.plan)
        assert rows <= 1e-2 and cols <= 1e-2, (stage, eps, rows, cols, int(res.iterations))
        assert int(res.iterations) < 1000, (stage, eps)  # stopped by the rule, not by the cap
        assert float(res.marginal_err) == pytest.approx(rows, rel=1e-4, abs=1e-7)
    # the release's rule on the same mean-scaled costs stops far from the marginals at small eps
    assert row_col_errors(sinkhorn(a, p, 0.01, stop="release", cost_scaling="mean").plan)[0] > 3e-2


def test_marginal_rule_counts_and_stops_as_a_plain_loop_measuring_its_plan():
    """No eps-scaling (cost_scaling none): the same iterations and plan as a loop that checks the plan's rows."""
    x, y = features(6, 12, 8, 21, scale=0.3).double(), features(6, 12, 8, 22, scale=0.3).double()
    for eps, tol in ((0.05, 1e-2), (0.2, 1e-3), (1.0, 1e-5)):
        res = sinkhorn(x, y, eps, stop="marginal", tol=tol, cost_scaling="none")
        plan, iters = marginal_loop(squared_distances(x, y), eps, tol, 1000)
        assert int(res.iterations) == iters and iters > 1, eps
        torch.testing.assert_close(res.plan, plan, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("eps", [0.02, 0.2])
def test_eps_scaling_converges_to_pots_plan(eps):
    """The marginal rule on mean-scaled costs (eps-scaling warm start) run to a tight tolerance gives the
    entropic plan that POT computes without any warm start."""
    x, y = features(3, 10, 6, 23).double(), features(3, 8, 6, 24).double()
    plan = sinkhorn_plan(x, y, eps=eps, cost_scaling="mean", tol=1e-10, max_iter=10_000)
    for i in range(3):
        cost = ot.dist(x[i].numpy(), y[i].numpy())
        cost /= cost.mean()
        ref = ot.sinkhorn(np.full(10, 0.1), np.full(8, 1 / 8), cost, eps, method="sinkhorn_log", numItermax=100_000,
                          stopThr=1e-13)
        np.testing.assert_allclose(plan[i].numpy(), ref, atol=1e-8, rtol=1e-5)


def warm_iterations(eps: float) -> int:
    """The eps-scaling warm-up of the marginal rule on mean-scaled costs: 2 iterations per halving of eps <= 1."""
    return 2 * max(math.floor(math.log2(1 / eps)), 0)


@pytest.mark.parametrize("rule", ["release", "marginal"])
def test_reading_the_flag_every_k_runs_at_most_k_minus_1_extra_iterations(rule):
    """The CUDA path's logic, run on a CPU: with a read every k iterations the loop leaves at the first read
    after the rule's stop (masked iterations in between), with the plan of the host-checked loop."""
    gen = torch.Generator().manual_seed(5)
    x = torch.relu(torch.randn(8, 16, 24, generator=gen))
    y = x[torch.randperm(8, generator=gen)]
    scaling, eps = ("none", 0.1) if rule == "release" else ("mean", 0.03)
    x = x * 0.05 if rule == "release" else x  # a scale where the release's rule stops early
    ref = sinkhorn(x, y, eps, 60, stop=rule, cost_scaling=scaling, check_every=1)
    warm = warm_iterations(eps) if rule == "marginal" else 0
    assert ref.reads == ref.executed - warm - (rule == "marginal")  # one read per test
    assert 3 < ref.executed - warm < 50
    for k in (2, 3, 8):
        res = sinkhorn(x, y, eps, 60, stop=rule, cost_scaling=scaling, check_every=k)
        assert torch.equal(res.plan, ref.plan) and int(res.iterations) == int(ref.iterations)
        assert res.executed == warm + math.ceil((ref.executed - warm) / k) * k
        assert res.reads == math.ceil((ref.executed - warm) / k)
    never = sinkhorn(x, y, eps, 60, stop=rule, cost_scaling=scaling, check_every=0)
    assert torch.equal(never.plan, ref.plan) and never.reads == 0 and never.executed == warm + 60


def test_stats_accumulate_iterations_and_marginal_errors_without_reading_them():
    stats = SinkhornStats(torch.device("cpu"))
    assert SinkhornStats.means(stats.totals()) == (None, None)
    x, y = features(4, 9, 5, 30, scale=0.2).double(), features(4, 9, 5, 31, scale=0.2).double()
    plans = [
        sinkhorn_plan(x, y, 0.1, stats=stats),  # release rule
        sinkhorn_plan(x, y, 0.05, stop="marginal", cost_scaling="none", stats=stats),
        sinkhorn_plan(x, y, 0.3, 17, stop="fixed", cost_scaling="mean", stats=stats),
    ]
    # independent recomputations: the release's loop restated, the loop that measures its plan's rows, the cap
    iterations = [release_loop(x, y)[1], marginal_loop(squared_distances(x, y), 0.05, 1e-2, 1000)[1], 17]
    errors = [row_col_errors(plan)[0] for plan in plans]
    totals = stats.totals()
    assert totals.dtype == torch.float64 and totals.device == x.device
    assert totals[0] == 3 and totals[1] == sum(iterations)
    assert float(totals[2]) == pytest.approx(sum(errors), rel=1e-9)
    assert SinkhornStats.means(totals) == pytest.approx((sum(iterations) / 3, sum(errors) / 3), rel=1e-9)
    stats.reset()
    assert stats.totals().tolist() == [0.0, 0.0, 0.0]


def test_config_defaults_pick_the_rule_by_cost_scaling_and_presets_keep_the_release():
    release, tuning = SinkhornConfig(), SinkhornConfig(cost_scaling="mean", eps=0.02)
    assert (release.rule, tuning.rule) == ("release", "marginal")
    x, y = features(4, 16, 32, 40), features(4, 16, 32, 41)
    # None tol and max_iter are the rule's own: the release's 0.1 and 100
    assert torch.equal(sinkhorn_plan(x, y, **release.plan_kwargs()),
                       sinkhorn_plan(x, y, eps=0.1, max_iter=100, stop="release", tol=0.1))
    for name, preset in PUBLISHED_RECIPES.items():
        cfg = TrainConfig(**{**preset, "data_dir": "/data"}).sinkhorn
        assert (cfg.rule, cfg.eps, cfg.plan_kwargs()) == ("release", 0.1, release.plan_kwargs()), name
    assert TrainConfig(sinkhorn={"cost_scaling": "mean"}).sinkhorn.rule == "marginal"
    assert SinkhornConfig(cost_scaling="mean", stop="release").rule == "release"


@pytest.mark.parametrize(("values", "message"), [
    ({"cost_scaling": "mean", "tol": 1.5}, "tol"),
    ({"stop": "marginal", "tol": 1.0}, "tol"),
    ({"stop": "fixed", "tol": 0.1}, "tol"),
    ({"stop": "sometimes"}, "stop"),
    ({"max_iter": 0}, "max_iter"),
    ({"tol": -0.1}, "tol"),
])
def test_config_refuses_settings_that_do_not_fit_the_rule(values, message):
    with pytest.raises(ValueError, match=message):
        SinkhornConfig(**values)


@pytest.fixture
def matmul_flags():
    """Save and restore torch's fp32 matmul precision flags around a test that changes them."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.fp32_precision,
             torch.backends.mkldnn.matmul.fp32_precision)
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision = saved[1:]


def flags() -> tuple[str, str, str]:
    return (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.fp32_precision,
            torch.backends.mkldnn.matmul.fp32_precision)


@pytest.mark.parametrize("setting", ["trainer", "medium"])
def test_cost_matmul_runs_at_full_fp32_whatever_the_global_flags(setting, matmul_flags, monkeypatch):
    if setting == "trainer":
        torch.backends.cuda.matmul.allow_tf32 = True  # what the Trainer sets on CUDA
    else:
        torch.set_float32_matmul_precision("medium")  # TF32 on CUDA, bf16 in oneDNN on a CPU
    before = flags()
    assert before[1] == "tf32"
    seen = []
    real = torch.Tensor.baddbmm_
    monkeypatch.setattr(torch.Tensor, "baddbmm_", lambda *a, **k: seen.append(flags()) or real(*a, **k))
    x, y = features(3, 16, 256, 50, scale=2.0), features(3, 16, 256, 51, scale=2.0)
    cost = squared_distances(x, y)
    assert seen == [("highest", "ieee", "ieee")]
    assert flags() == before
    exact = ((x.double().unsqueeze(2) - y.double().unsqueeze(1)) ** 2).sum(-1)
    # fp32 rounding of the expansion |x|^2 + |y|^2 - 2 x.y: a few ulps of its terms (about 1e3 here)
    terms = x.double().pow(2).sum(-1)[:, :, None] + y.double().pow(2).sum(-1)[:, None]
    bound = 4 * torch.finfo(torch.float32).eps * terms
    assert ((cost.double() - exact).abs() <= bound).all()
    monkeypatch.undo()
    torch.set_float32_matmul_precision("highest")
    assert torch.equal(cost, squared_distances(x, y))  # the same bits as with the flags at full precision
