"""Calibration and robustness evaluations, each against an independent oracle.

Oracles: a plain NumPy loop over bins and torchmetrics' MulticlassCalibrationError (ECE), F.cross_entropy (NLL),
the closed-form FGSM/PGD step of a two-class linear model, the eps-ball and [0, 1] constraints measured in
pixel space, and the trainer's own evaluation of the same images (clean top-1 and loss).
"""

from typing import get_args

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn
from torchmetrics.classification import MulticlassCalibrationError

from alignmixup.config import EvaluationConfig, TrainConfig, error_line
from alignmixup.data import Normalization
from alignmixup.evaluation import (
    attack_budget,
    calibration_totals,
    default_eps,
    evaluation_totals,
    fgsm,
    finalize,
    metric_names,
    pgd,
    rank_share,
    totals_size,
)
from alignmixup.names import EVALUATION_METRICS
from alignmixup.trainer import Trainer

ALL = ["calibration", "fgsm", "pgd"]


def numpy_calibration(logits: np.ndarray, labels: np.ndarray, bins: int, left_open: bool = True) -> dict[str, float]:
    """ECE, OE and NLL by the textbook loop: bins (k/bins, (k+1)/bins], confidence = max softmax probability.

    left_open=False bins [k/bins, (k+1)/bins) instead (1 in the last bin): the other convention, for contrast.
    """
    z = logits.astype(np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    conf, correct, n = p.max(axis=1), z.argmax(axis=1) == labels, len(labels)
    ece = oe = 0.0
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        if left_open:
            members = [i for i in range(n) if lo < conf[i] <= hi]
        else:
            members = [i for i in range(n) if lo <= conf[i] < hi or (k == bins - 1 and conf[i] == 1.0)]
        if members:
            acc_b, conf_b = np.mean(correct[members]), np.mean(conf[members])
            ece += len(members) / n * abs(acc_b - conf_b)
            oe += len(members) / n * conf_b * max(conf_b - acc_b, 0.0)
    nll = -np.mean(log_p[np.arange(n), labels])
    return {"ece": ece, "oe": oe, "nll": nll, "conf": conf}


def edge_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of 5 classes whose confidences sit exactly on bin edges (1/5 = 3/15, 1/3 = 5/15) and at 1."""
    rows = [
        ([0, 0, 0, 0, 0], 0), ([0, 0, 0, 0, 0], 3), ([0, 0, 0, 0, 0], 1),  # 1/5: argmax ties -> class 0
        ([0, 0, 0, -1000, -1000], 0), ([0, 0, 0, -1000, -1000], 2),  # 1/3
        ([0, -800, -800, -800, -800], 0), ([-800, 0, -800, -800, -800], 0),  # exactly 1, right and wrong
        ([40, 0, 0, 0, 0], 0),  # 1 in float64 too
    ]
    gen = torch.Generator().manual_seed(0)
    spread = torch.randn(40, 5, generator=gen) * 2.5
    logits = torch.cat([torch.tensor([r for r, _ in rows], dtype=torch.float32), spread])
    labels = torch.cat([torch.tensor([y for _, y in rows]), torch.randint(0, 5, (40,), generator=gen)])
    return logits, labels


def metrics_of(logits: torch.Tensor, labels: torch.Tensor, cfg: EvaluationConfig) -> dict[str, float]:
    totals = torch.zeros(totals_size(cfg.bins), dtype=torch.float64)
    totals[:3 * cfg.bins + 1] = calibration_totals(logits, labels, cfg.bins)
    return finalize(totals, cfg)


def test_ece_oe_nll_equal_a_numpy_loop_with_ties_at_bin_edges_and_confidence_one():
    logits, labels = edge_logits()
    cfg = EvaluationConfig(kinds=["calibration"])
    oracle = numpy_calibration(logits.numpy(), labels.numpy(), 15)
    assert {3 / 15, 5 / 15, 1.0} <= set(oracle["conf"].tolist())  # the ties and the 1 really are in the data
    got = metrics_of(logits, labels, cfg)
    assert got["ece"] == pytest.approx(oracle["ece"], rel=1e-12, abs=1e-15)
    assert got["oe"] == pytest.approx(oracle["oe"], rel=1e-12, abs=1e-15)
    assert got["nll"] == pytest.approx(oracle["nll"], rel=1e-12)
    assert got["nll"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert got["oe"] > 0.01  # the confident mistakes count
    assert got["images"] == len(labels)
    assert got["clean_acc"] == pytest.approx(100.0 * float((logits.argmax(1) == labels).float().mean()))
    # The ties decide: with conf = k/15 counted in bin k instead of k - 1 the ECE differs.
    assert abs(numpy_calibration(logits.numpy(), labels.numpy(), 15, left_open=False)["ece"] - got["ece"]) > 1e-4
    counts = calibration_totals(logits, labels, 15)[:15]
    conf = torch.tensor(oracle["conf"])
    assert counts[2] == ((conf > 2 / 15) & (conf <= 3 / 15)).sum() >= 3  # the three 1/5 ties: bin 2, not 3
    assert counts[4] == ((conf > 4 / 15) & (conf <= 5 / 15)).sum() >= 2  # the two 1/3 ties: bin 4, not 5
    assert counts[14] == (conf > 14 / 15).sum() >= 3


def test_ece_equals_torchmetrics():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 10, generator=gen) * 3
    labels = torch.where(torch.rand(300, generator=gen) < 0.6, logits.argmax(1), torch.randint(0, 10, (300,)))
    conf = torch.softmax(logits.double(), 1).amax(1)
    # No confidence within float32 round-off of an edge: torchmetrics bins [k/15, (k+1)/15) in float32.
    assert ((conf * 15 - (conf * 15).round()).abs() > 1e-5).all()
    cfg = EvaluationConfig(kinds=["calibration"])
    expected = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")(logits, labels).item()
    assert metrics_of(logits, labels, cfg)["ece"] == pytest.approx(expected, rel=1e-5)
    assert metrics_of(logits, labels, cfg)["ece"] > 0.05


def test_config_validation_and_defaults():
    def error(**kw) -> str:
        with pytest.raises(ValidationError) as exc:
            EvaluationConfig(**kw)
        return error_line(exc.value)

    assert error(eps=0).startswith("eps: ")
    assert error(eps=2).startswith("eps: ")
    assert error(pgd_steps=0).startswith("pgd_steps: ")
    assert error(pgd_step_size=0).startswith("pgd_step_size: ")
    assert error(bins=1).startswith("bins: ")
    assert error(images=0).startswith("images: ")
    assert error(kinds=["fgsm", "fgsm"]) == "kinds: repeated kind in ['fgsm', 'fgsm']"
    assert error(kinds=["cw"]).startswith("kinds.0: ")
    assert error(epochs=[0]) == "epochs: epochs are 1-based, got 0"
    assert error(epochs=[2, 2]).startswith("epochs: repeated")
    assert error(fgsm_eps=0.1).startswith("fgsm_eps: Extra inputs")
    cfg = EvaluationConfig(kinds=ALL, epochs=[8, 2])
    assert cfg.epochs == [2, 8] and cfg.runs_at(2, False) and not cfg.runs_at(3, False) and cfg.runs_at(3, True)
    assert not EvaluationConfig().runs_at(5, True)  # no kinds: nothing runs
    assert set(get_args(get_args(EvaluationConfig.model_fields["kinds"].annotation)[0])) == set(EVALUATION_METRICS)
    assert default_eps(32) == 8 / 255 and default_eps(64) == 4 / 255 and default_eps(224) == 4 / 255
    assert attack_budget(EvaluationConfig(), 32) == (8 / 255, 2 / 255)
    assert attack_budget(EvaluationConfig(eps=0.1, pgd_step_size=0.05), 64) == (0.1, 0.05)
    assert metric_names(EvaluationConfig()) == [] and finalize(torch.zeros(48, dtype=torch.float64),
                                                                EvaluationConfig()) == {}
    assert metric_names(cfg) == ["clean_acc", "images", "ece", "oe", "nll", "fgsm_acc", "pgd_acc"]
    for world in (1, 2, 3, 8):
        assert sum(rank_share(1001, r, world) for r in range(world)) == 1001


# --------------------------------------------------------------------------- a linear model: closed forms

MEAN, STD = (0.3, 0.5, 0.7), (0.2, 0.25, 0.5)


class Recorder(nn.Module):
    """A two-class linear model on (B, 3, 4, 4) inputs that records the layout of every input it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(48, 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(2, 48, generator=torch.Generator().manual_seed(2)) * 0.05)
        self.channels_last: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.channels_last.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return self.linear(x.flatten(1))


def linear_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 pixels with 0, 1, 3/255 and 252/255 among them (the clamp to [0, 1] bites), their normalised
    channels_last batch, and labels."""
    gen = torch.Generator().manual_seed(3)
    u8 = torch.randint(0, 256, (16, 4, 4, 3), generator=gen, dtype=torch.uint8)
    u8[:, 0, 0], u8[:, 0, 1], u8[:, 1, 0], u8[:, 1, 1] = 0, 255, 3, 252
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    x = (u8.permute(0, 3, 1, 2).float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert x.is_contiguous(memory_format=torch.channels_last)
    return u8.permute(0, 3, 1, 2).double() / 255, x, torch.randint(0, 2, (16,), generator=gen)


def closed_form_direction(model: Recorder, y: torch.Tensor) -> torch.Tensor:
    """sign of d CE / d pixel for a two-class linear model: sign(w_other - w_label) (p_other > 0, std > 0)."""
    w = model.linear.weight.detach().double().view(2, 3, 4, 4)
    return torch.sign(w[1 - y] - w[y])


def pixels_of(x: torch.Tensor) -> torch.Tensor:
    """Un-normalise with the test's own float64 mean and std."""
    mean, std = torch.tensor(MEAN, dtype=torch.float64), torch.tensor(STD, dtype=torch.float64)
    return x.double() * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)


def test_fgsm_and_pgd_on_a_linear_model_equal_their_closed_forms():
    model = Recorder()
    pixels, x, y = linear_batch()
    norm = Normalization(tuple(MEAN), tuple(STD))
    direction = closed_form_direction(model, y)
    assert (direction != 0).all()
    eps = 8 / 255
    expected = (pixels + eps * direction).clamp(0, 1)
    assert ((pixels + eps * direction < 0) | (pixels + eps * direction > 1)).any()  # the clamp is exercised
    adv = fgsm(model, x, y, norm, eps)
    assert adv.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(pixels_of(adv), expected, atol=1e-6, rtol=0)
    # PGD without random start moves the same way each step: min(k * step, eps) along the sign, then [0, 1].
    adv_pgd = pgd(model, x, y, norm, eps, steps=3, step_size=3 / 255, random_start=False)
    assert torch.allclose(pixels_of(adv_pgd), expected, atol=1e-6, rtol=0)
    adv_pgd = pgd(model, x, y, norm, eps, steps=2, step_size=3 / 255, random_start=False)
    assert torch.allclose(pixels_of(adv_pgd), (pixels + 6 / 255 * direction).clamp(0, 1), atol=1e-6, rtol=0)
    # The evaluation counts the closed-form adversarial images' hits.
    cfg = EvaluationConfig(kinds=["fgsm", "pgd"], eps=eps, pgd_steps=3, pgd_step_size=3 / 255,
                           pgd_random_start=False)
    model.channels_last.clear()
    metrics = finalize(evaluation_totals(model, [(x[:10], y[:10]), (x[10:], y[10:])], norm, cfg), cfg)
    w, b = model.linear.weight.detach().double(), model.linear.bias.detach().double()
    mean, std = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1), torch.tensor(STD, dtype=torch.float64)
    adv_logits = ((expected - mean) / std.view(1, 3, 1, 1)).flatten(1) @ w.T + b
    expected_acc = 100.0 * float((adv_logits.argmax(1) == y).double().mean())
    assert metrics["fgsm_acc"] == pytest.approx(expected_acc) and metrics["pgd_acc"] == pytest.approx(expected_acc)
    assert metrics["fgsm_acc"] < metrics["clean_acc"]
    assert model.channels_last and all(model.channels_last)  # every forward saw channels_last input
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- a trained digits model


@pytest.fixture(scope="module")
def digits() -> Trainer:
    tr = Trainer(TrainConfig(dataset="digits", width=0.125, epochs=3, batch_size=64, lr=0.05, lr_schedule="cosine",
                             threads=2, seed=1))
    tr.fit()
    tr.optimizer.zero_grad(set_to_none=True)
    return tr


def digits_norm(tr: Trainer) -> Normalization:
    return tr.data.norm


def test_trained_model_attacks_lower_accuracy_and_clean_metrics_match_the_trainer(digits):
    tr = digits
    cfg = EvaluationConfig(kinds=ALL, images=None)
    tr.model.train()
    totals = evaluation_totals(tr.model, tr.data.eval_batches("test", 128, 0, 1), digits_norm(tr), cfg,
                               tr.autocast, limit=None, seed=5)
    assert tr.model.training  # mode restored
    assert all(p.grad is None for p in tr.model.parameters())
    m = finalize(totals, cfg)
    loss, top1, _ = tr.evaluate("test")
    assert m["images"] == len(tr.data.test_idx)
    assert m["clean_acc"] == pytest.approx(top1) and m["nll"] == pytest.approx(loss, rel=1e-6)
    assert m["clean_acc"] > 60.0  # 80.2% here after 3 epochs; chance is 10%
    assert m["fgsm_acc"] < m["clean_acc"] - 5.0
    assert m["pgd_acc"] <= m["fgsm_acc"]
    tr.model.eval()
    with torch.no_grad():
        logits = torch.cat([tr.model(x) for x, _ in tr.data.eval_batches("test", 128, 0, 1)])
    expected = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")(logits, tr.data.test.labels).item()
    assert m["ece"] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_pgd_stays_in_the_eps_ball_and_in_unit_pixels(digits):
    tr = digits
    norm = digits_norm(tr)
    x, y = next(tr.data.eval_batches("test", 128, 0, 1))
    pixels = norm.to_pixels(x).double()
    assert (pixels * 255 - (pixels * 255).round()).abs().max() < 1e-3  # un-normalised: the uint8 pixels / 255
    eps = 8 / 255
    gen = torch.Generator().manual_seed(0)
    adv = pgd(tr.model.eval(), x, y, norm, eps, steps=5, step_size=3 / 255, random_start=True, generator=gen)
    delta = norm.to_pixels(adv).double() - pixels
    assert delta.abs().max() <= eps + 1e-6 and delta.abs().max() >= eps - 1e-6  # on the ball's surface somewhere
    adv_pixels = norm.to_pixels(adv).double()
    assert adv_pixels.min() >= -1e-6 and adv_pixels.max() <= 1 + 1e-6
    assert (adv_pixels < 1e-6).any()  # the digits' black background is pushed against 0
    assert adv.is_contiguous(memory_format=torch.channels_last)
    # One PGD step of eps from the clean image is FGSM, bit for bit.
    one = pgd(tr.model, x, y, norm, eps, steps=1, step_size=eps, random_start=False)
    assert torch.equal(one, fgsm(tr.model, x, y, norm, eps))
    assert all(p.grad is None for p in tr.model.parameters())


def test_totals_of_two_ranks_sum_to_the_totals_of_the_whole(digits):
    tr = digits
    norm = digits_norm(tr)
    cfg = EvaluationConfig(kinds=ALL, images=101, pgd_random_start=False, pgd_steps=3)
    whole = evaluation_totals(tr.model, tr.data.eval_batches("test", 64, 0, 1), norm, cfg, limit=cfg.images)
    halves = [evaluation_totals(tr.model, tr.data.eval_batches("test", 32, r, 2), norm, cfg,
                                limit=rank_share(cfg.images, r, 2)) for r in range(2)]
    summed = halves[0] + halves[1]
    b = cfg.bins
    counts = torch.cat([summed[:b], summed[2 * b:3 * b], summed[3 * b + 1:]])
    assert torch.equal(counts, torch.cat([whole[:b], whole[2 * b:3 * b], whole[3 * b + 1:]]))
    assert torch.allclose(summed, whole, rtol=1e-9, atol=1e-9)
    assert finalize(summed, cfg)["images"] == 101
    assert finalize(summed, cfg) == pytest.approx(finalize(whole, cfg), rel=1e-9)


def test_bf16_autocast_runs_the_model_in_bf16_and_attacks_still_bite(digits):
    tr = digits
    dtypes = []
    handle = tr.model.head.register_forward_hook(lambda mod, a, out: dtypes.append(out.dtype))
    cfg = EvaluationConfig(kinds=ALL, images=128)
    try:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        m = finalize(evaluation_totals(tr.model, tr.data.eval_batches("test", 64, 0, 1), digits_norm(tr), cfg,
                                       autocast, limit=cfg.images), cfg)
    finally:
        handle.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert m["images"] == 128 and m["fgsm_acc"] < m["clean_acc"] and m["pgd_acc"] <= m["fgsm_acc"]
    assert all(p.grad is None for p in tr.model.parameters())
