"""Mixing methods: input mixup, manifold mixup and AlignMixup, with the mixed loss.

Shape of the API (after timm's `Mixup`): a `Mixer` is called on a batch and returns a `BatchMix`,
which is both the hook the network calls at each mixing point and the mixed target for the loss:

    mix = mixer(x, y)                 # draws lam, the pairing, the layer, the direction
    loss = mix.loss(model(x, mix))    # lam * CE(y) + (1 - lam) * CE(y[perm])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from alignmixup.config import Method, SinkhornConfig
from alignmixup.sinkhorn import SinkhornStats, sinkhorn_plan


def align_mix(
    h: torch.Tensor, perm: torch.Tensor, lam: float, direction: int, sinkhorn: SinkhornConfig,
    stats: SinkhornStats | None = None,
) -> torch.Tensor:
    """AlignMixup of feature maps h (B, C, H, W) with h[perm], aligned by an entropic OT plan.

    direction 0 aligns the partner to each sample (mix = lam*a + (1-lam)*b R^T, a's layout);
    direction 1 aligns each sample to its partner (mix = lam*a R + (1-lam)*b, b's layout).
    The plan R (N times the Sinkhorn plan) is computed without gradient; the mix has one. The plan's
    iterations and marginal error go to `stats`. Memory: see aligned_mix_peak_bytes.
    """
    b, c, hh, ww = h.shape
    n = hh * ww
    a = h.permute(0, 2, 3, 1).reshape(b, n, c)  # positions x channels; free for channels_last
    p = a[perm]
    r = sinkhorn_plan(a.detach(), p.detach(), **sinkhorn.plan_kwargs(), stats=stats).mul_(n).to(a.dtype)
    if direction == 0:  # lerp in place: its backward needs no saved tensor, bmm's needs r and p, not its output
        mixed = torch.bmm(r, p).lerp_(a, lam)  # partner moved onto a's positions
    else:
        mixed = torch.bmm(r.transpose(1, 2), a).lerp_(p, 1.0 - lam)  # a moved onto the partner's
    return mixed.reshape(b, hh, ww, c).permute(0, 3, 1, 2)


SCALAR_BYTES = 64


def aligned_mix_peak_bytes(batch: int, positions: int, channels: int, *, feature_bytes: int = 4) -> int:
    """Bytes align_mix allocates at its peak beyond its input (output and tensors kept for backward included),
    by analysis of its code and sinkhorn's; feature_bytes 4 for fp32 features, 2 under bf16 autocast.

    With S one (B, N, N) fp32 tensor, F the features p = a[perm] (B, N, C), held throughout (flattening the
    map is a view in either memory format), and V one (B, N) fp32 vector, the peak is F plus the largest of:
      cost:  the fp32 copies of a and p when the features are not fp32, the cost's buffer S, x2 and y2 (2V);
      loop:  -C/eps (in the cost's buffer, S), the half-steps' buffer (S), u, v, the new potential, the
             max and the sum of a half-step (5V);
      mix:   R made in place of the plan (S) and its copy in the feature dtype, if not fp32; then that copy
             (or R) and bmm's output (F, which lerp_ updates in place).
    SCALAR_BYTES covers the scalars held throughout (the iteration count, the marginal error, the stop flag).
    """
    s = batch * positions * positions * 4
    f = batch * positions * channels * feature_bytes
    vec = batch * positions * 4
    if feature_bytes == 4:
        cost, mix = s + 2 * vec, s + f
    else:
        r_low = s * feature_bytes // 4
        cost, mix = 2 * batch * positions * channels * 4 + s + 2 * vec, max(s + r_low, r_low + f)
    return f + max(cost, 2 * s + 5 * vec, mix) + SCALAR_BYTES


def mixed_cross_entropy(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float) -> torch.Tensor:
    """The mixup loss: lam * CE(logits, y_a) + (1 - lam) * CE(logits, y_b)."""
    logp = F.log_softmax(logits.float(), dim=1)
    nll_a = F.nll_loss(logp, y_a)
    return nll_a if lam == 1.0 else lam * nll_a + (1.0 - lam) * F.nll_loss(logp, y_b)


@dataclass
class BatchMix:
    """One batch's mixing draw: the network's mixing hook and the mixed target."""

    y: torch.Tensor
    perm: torch.Tensor | None
    lam: float
    layer: int  # -1: no mixing
    direction: int
    aligned: bool
    sinkhorn: SinkhornConfig
    stats: SinkhornStats | None = None

    def __call__(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        if layer != self.layer or self.perm is None:
            return h
        if self.aligned and layer > 0:
            return align_mix(h, self.perm, self.lam, self.direction, self.sinkhorn, self.stats)
        return torch.lerp(h[self.perm], h, self.lam)

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        y_b = self.y if self.perm is None else self.y[self.perm]
        return mixed_cross_entropy(logits, self.y, y_b, self.lam)


class Mixer:
    """Draws one mixing decision per batch for a method, from its own seeded generators.

    lam ~ Beta(alpha, alpha), the layer (uniform over `layers`) and the direction are drawn on the
    host; the pairing permutation is drawn on the batch's device so the step never waits on a copy.
    The trainer reseeds it from (seed, epoch, rank) at each epoch, so a resumed run draws the same.
    `stats` accumulates the Sinkhorn convergence of its aligned batches on the device (SinkhornStats: the
    trainer resets it at each epoch and reports the means of its all-reduced totals).
    """

    def __init__(
        self, method: Method, alpha: float, layers: list[int], sinkhorn: SinkhornConfig, device: torch.device,
        seed: int = 0,
    ) -> None:
        self.method, self.alpha, self.sinkhorn = method, alpha, sinkhorn
        self.layers = [0] if method == "mixup" else list(layers)
        self.perm_gen = torch.Generator(device=device)
        self.stats = SinkhornStats(device)
        self.seed(seed)

    def seed(self, seed: int) -> None:
        """Restart both generators from `seed`."""
        self.rng = np.random.default_rng(seed)
        self.perm_gen.manual_seed(seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> BatchMix:
        if self.method == "erm":
            return BatchMix(y, None, 1.0, -1, 0, False, self.sinkhorn)
        lam = float(self.rng.beta(self.alpha, self.alpha))
        layer = int(self.layers[self.rng.integers(len(self.layers))])
        direction = int(self.rng.integers(2))
        perm = torch.randperm(x.shape[0], device=x.device, generator=self.perm_gen)
        return BatchMix(y, perm, lam, layer, direction, self.method == "alignmixup", self.sinkhorn, self.stats)
