"""Evaluations beyond top-1: calibration (ECE, OE, NLL) and L-inf robustness (FGSM, PGD) of a classifier.

Every rank evaluates its own share of a split and returns sufficient statistics as one float64 tensor (per-bin
counts, confidence sums and correct counts; the NLL sum; FGSM and PGD correct counts); the caller sums them
over ranks with one `dist.all_reduce` and `finalize` turns the sums into metrics, so a figure is that of the
whole evaluated set, never a mean of per-rank figures.

Attacks work in [0, 1] pixel space: the batches are normalised (x = (pixel - mean) / std), so an attack
un-normalises, steps by the sign of the input gradient, clamps to the eps ball and to [0, 1], and re-normalises.
The input gradient is taken w.r.t. the normalised input; its sign is that of the pixel gradient (std > 0).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from alignmixup.config import EvaluationConfig
from alignmixup.data import Normalization
from alignmixup.names import COMMON_METRICS, EVALUATION_METRICS

# What each kind reports (accuracies in percent, ECE and OE as fractions in [0, 1], NLL in nats per image).
# Whenever any kind runs, `clean_acc` (top-1 % on the same images) and `images` (how many) come with it.
_SCALARS = ("nll_sum", "fgsm_correct", "pgd_correct")  # after the 3 * bins per-bin sums


def metric_names(cfg: EvaluationConfig) -> list[str]:
    """The keys `finalize` returns for cfg, in order (the caller prefixes the split, e.g. val_ece)."""
    if not cfg.kinds:
        return []
    return [*COMMON_METRICS, *(name for kind in cfg.kinds for name in EVALUATION_METRICS[kind])]


def totals_size(bins: int) -> int:
    """Length of the sufficient-statistics tensor for `bins` confidence bins."""
    return 3 * bins + len(_SCALARS)


def default_eps(image_size: int) -> float:
    """The usual L-inf budget: 8/255 for CIFAR-sized inputs (up to 32x32), 4/255 for 64x64 and larger."""
    return 8 / 255 if image_size <= 32 else 4 / 255


def attack_budget(cfg: EvaluationConfig, image_size: int) -> tuple[float, float]:
    """(eps, PGD step size) in [0, 1] pixels: cfg's values, or the defaults (default_eps, eps / 4)."""
    eps = cfg.eps if cfg.eps is not None else default_eps(image_size)
    return eps, cfg.pgd_step_size if cfg.pgd_step_size is not None else eps / 4


def rank_share(images: int | None, rank: int, world: int) -> int | None:
    """How many images `rank` evaluates so that the strided shares idx[rank::world] cover the first `images`.

    Rank r takes the first share(r) items of idx[r::world]; together they are exactly idx[:images].
    """
    if images is None:
        return None
    return images // world + (rank < images % world)


def _logits_and_grad_sign(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          autocast: contextlib.AbstractContextManager) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits of x and sign(d CE_sum / d x), gradient w.r.t. the input only (no parameter .grad)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with autocast:
            logits = model(x).float()
        # A sum, not a mean: per-sample gradients are not scaled by 1/B (no bf16 underflow; the sign is the same).
        loss = F.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return logits.detach(), grad.sign()


def _project(adv: torch.Tensor, pixels: torch.Tensor, eps: float) -> torch.Tensor:
    """Clamp to the L-inf ball of radius eps around the clean pixels, then to [0, 1]."""
    return torch.minimum(torch.maximum(adv, pixels - eps), pixels + eps).clamp_(0.0, 1.0)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Normalization, eps: float,
         autocast: contextlib.AbstractContextManager = contextlib.nullcontext()) -> torch.Tensor:
    """FGSM (Goodfellow et al. 2015): the normalised batch one step of eps * sign(grad) away in [0, 1] pixels.

    The caller puts the model in eval mode (evaluation_totals does).
    """
    return _fgsm_step(x, _logits_and_grad_sign(model, x, y, autocast)[1], norm, eps)


def _fgsm_step(x: torch.Tensor, sign: torch.Tensor, norm: Normalization, eps: float) -> torch.Tensor:
    return norm.from_pixels((norm.to_pixels(x) + eps * sign).clamp_(0.0, 1.0))


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Normalization, eps: float, steps: int,
        step_size: float, random_start: bool, autocast: contextlib.AbstractContextManager = contextlib.nullcontext(),
        generator: torch.Generator | None = None) -> torch.Tensor:
    """L-inf PGD (Madry et al. 2018): `steps` signed-gradient steps, each projected to the eps ball and [0, 1].

    Returns the final iterate, normalised, in x's layout. A random start draws uniformly in the eps ball.
    The caller puts the model in eval mode (evaluation_totals does).
    """
    pixels = norm.to_pixels(x.detach())
    adv, current = pixels, x.detach()  # the first gradient is taken at x itself, as FGSM's (no round trip)
    if random_start:
        noise = torch.empty_like(pixels).uniform_(-eps, eps, generator=generator)  # empty_like keeps the layout
        adv = (pixels + noise).clamp_(0.0, 1.0)
        current = norm.from_pixels(adv)
    for _ in range(steps):
        sign = _logits_and_grad_sign(model, current, y, autocast)[1]
        adv = _project(adv + step_size * sign, pixels, eps)
        current = norm.from_pixels(adv)
    return current


def calibration_totals(logits: torch.Tensor, y: torch.Tensor, bins: int) -> torch.Tensor:
    """Per-bin counts, confidence sums and correct counts (3 * bins), then the NLL sum; float64.

    Confidence = max softmax probability (float64), bin k = (k/bins, (k+1)/bins] (Guo et al. 2017), so a
    confidence of exactly k/bins falls in bin k - 1 and a confidence of 1 in the last bin. Correct = the
    argmax of the logits (first one on ties) equals the label.
    """
    logits64 = logits.detach().double()
    conf = torch.softmax(logits64, dim=1).amax(dim=1)
    correct = (logits.detach().argmax(dim=1) == y).double()
    upper = torch.arange(1, bins, device=logits.device, dtype=torch.float64) / bins  # inner edges 1/bins..(bins-1)/bins
    idx = torch.bucketize(conf, upper)  # i with upper[i-1] < conf <= upper[i]
    one_hot = F.one_hot(idx, bins).double()  # (n, bins): a matmul, deterministic unlike atomic scatter-adds
    per_bin = one_hot.T @ torch.stack([torch.ones_like(conf), conf, correct], dim=1)  # (bins, 3)
    nll = F.cross_entropy(logits64, y, reduction="sum")
    return torch.cat([per_bin.T.reshape(-1), nll.view(1)])


def evaluation_totals(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], norm: Normalization,
    cfg: EvaluationConfig, autocast: contextlib.AbstractContextManager = contextlib.nullcontext(),
    limit: int | None = None, seed: int = 0,
) -> torch.Tensor:
    """Sufficient statistics (float64, on the model's device, length totals_size(cfg.bins)) of cfg.kinds.

    Evaluates the first `limit` images of `batches` (normalised, labels) with the model in eval mode (its
    mode is restored afterwards). The clean forward gives the calibration statistics; FGSM reuses its input
    gradient; PGD's random start is drawn from `seed`. Forward passes run under `autocast`; parameter
    gradients are never computed. The attack budget follows the batches' image size (attack_budget).
    Sum the result over ranks (one all_reduce), then call finalize.
    """
    device = next(model.parameters()).device
    totals = torch.zeros(totals_size(cfg.bins), dtype=torch.float64, device=device)
    kinds = set(cfg.kinds)
    base = 3 * cfg.bins
    generator = None
    seen = 0
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            if limit is not None:
                if seen >= limit:
                    break
                x, y = x[:limit - seen], y[:limit - seen]
            seen += len(y)
            eps, step_size = attack_budget(cfg, x.shape[-1])
            if "fgsm" in kinds:
                logits, sign = _logits_and_grad_sign(model, x, y, autocast)
            else:
                with torch.no_grad(), autocast:
                    logits = model(x).float()
            totals[:base + 1] += calibration_totals(logits, y, cfg.bins)
            attacks = []
            if "fgsm" in kinds:
                attacks.append(("fgsm_correct", _fgsm_step(x, sign, norm, eps)))
            if "pgd" in kinds:
                if generator is None:
                    generator = torch.Generator(device=x.device)
                    generator.manual_seed(seed)
                attacks.append(("pgd_correct", pgd(model, x, y, norm, eps, cfg.pgd_steps, step_size,
                                                   cfg.pgd_random_start, autocast, generator)))
            for name, adv in attacks:
                with torch.no_grad(), autocast:
                    hits = (model(adv).argmax(dim=1) == y).sum()
                totals[base + _SCALARS.index(name)] += hits.double()
    finally:
        model.train(was_training)
    return totals


def finalize(totals: torch.Tensor, cfg: EvaluationConfig) -> dict[str, float]:
    """Metrics of cfg.kinds (keys: metric_names(cfg)) from totals summed over ranks.

    ECE = sum_b |B_b|/n |acc_b - conf_b|; OE = sum_b |B_b|/n conf_b max(conf_b - acc_b, 0) (Thulasidasan
    et al. 2019); NLL = mean cross-entropy; accuracies in percent. NaN when no image was evaluated.
    """
    if totals.numel() != totals_size(cfg.bins):
        raise ValueError(f"totals: expected {totals_size(cfg.bins)} values for {cfg.bins} bins, got {totals.numel()}")
    if not cfg.kinds:
        return {}
    t = totals.detach().to("cpu", torch.float64)
    b = cfg.bins
    count, conf_sum, correct = t[:b], t[b:2 * b], t[2 * b:3 * b]
    scalars = dict(zip(_SCALARS, t[3 * b:].tolist(), strict=True))
    n = float(count.sum())
    out: dict[str, float] = {"images": int(n)}
    if n == 0:
        return out | {name: float("nan") for name in metric_names(cfg) if name != "images"}
    out["clean_acc"] = 100.0 * float(correct.sum()) / n
    for kind in cfg.kinds:
        if kind == "calibration":
            used = count > 0
            conf_b, acc_b, weight = conf_sum[used] / count[used], correct[used] / count[used], count[used] / n
            out["ece"] = float((weight * (acc_b - conf_b).abs()).sum())
            out["oe"] = float((weight * conf_b * (conf_b - acc_b).clamp(min=0)).sum())
            out["nll"] = scalars["nll_sum"] / n
        else:
            out[f"{kind}_acc"] = 100.0 * scalars[f"{kind}_correct"] / n
    return {name: out[name] for name in metric_names(cfg)}
