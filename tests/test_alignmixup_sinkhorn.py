"""Sinkhorn: convergence, agreement with POT and with the release's loop, permutations, stability."""

import math

import numpy as np
import ot
import pytest
import torch

from alignmixup.sinkhorn import sinkhorn_plan, squared_distances


def release_loop(x: torch.Tensor, y: torch.Tensor, eps: float = 0.1, max_iter: int = 100) -> torch.Tensor:
    """The release's SinkhornDistance.forward, restated: u/v potentials, `.item()` stop test per iteration."""
    cost = ((x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2).sum(-1)
    mu = torch.full(x.shape[:2], 1.0 / x.shape[1], dtype=x.dtype)
    nu = torch.full(y.shape[:2], 1.0 / y.shape[1], dtype=x.dtype)
    u, v = torch.zeros_like(mu), torch.zeros_like(nu)

    def m(u, v):
        return (-cost + u.unsqueeze(-1) + v.unsqueeze(-2)) / eps

    for _ in range(max_iter):
        u1 = u
        u = eps * (torch.log(mu) - torch.logsumexp(m(u, v), dim=-1)) + u
        v = eps * (torch.log(nu) - torch.logsumexp(m(u, v).transpose(-2, -1), dim=-1)) + v
        if (u - u1).abs().sum(-1).mean().item() < 0.1:
            break
    return torch.exp(m(u, v))


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
    ours = sinkhorn_plan(x, y, eps=0.1, max_iter=100)
    torch.testing.assert_close(ours, release_loop(x, y), rtol=1e-4, atol=1e-7)
    # and on raw scale, where 100 iterations do not converge (fp64: costs / eps of 1e4 amplify rounding)
    x, y = features(4, 16, 512, 6).double(), features(4, 16, 512, 7).double()
    torch.testing.assert_close(sinkhorn_plan(x, y), release_loop(x, y), rtol=1e-6, atol=1e-9)


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


@pytest.mark.parametrize("stop", ["release", "fixed"])
def test_masked_blocks_and_compiled_blocks_give_the_host_checked_plan(stop):
    """Reading the stop flag every k iterations (or never: masked on the device), eager or torch.compile'd,
    returns the plan of the loop that checks on the host every iteration."""
    gen = torch.Generator().manual_seed(3)
    x = torch.relu(torch.randn(6, 9, 12, generator=gen))
    y = x[:, torch.randperm(9, generator=gen)]
    kwargs = dict(eps=0.5, max_iter=23, stop=stop)
    every = sinkhorn_plan(x, y, check_every=1, compiled=False, **kwargs)
    for check_every in (0, 4):
        assert torch.equal(sinkhorn_plan(x, y, check_every=check_every, compiled=False, **kwargs), every)
    compiled = sinkhorn_plan(x, y, check_every=0, compiled=True, **kwargs)
    torch.testing.assert_close(compiled, every, rtol=1e-5, atol=1e-7)
