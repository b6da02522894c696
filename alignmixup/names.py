"""Names of what a run reports that tables elsewhere key on, without importing torch (tune_jobs.schema and the
analysis read them): the evaluations' metrics and the Sinkhorn convergence columns."""

from __future__ import annotations

# evaluation kind -> its metrics; every evaluated split also reports COMMON_METRICS (as <split>_<name>)
EVALUATION_METRICS: dict[str, tuple[str, ...]] = {
    "calibration": ("ece", "oe", "nll"), "fgsm": ("fgsm_acc",), "pgd": ("pgd_acc",),
}
COMMON_METRICS = ("clean_acc", "images")
EVALUATED_SPLITS = ("val", "test")
# the trainer's per-epoch Sinkhorn convergence (EpochMetrics fields; None in an epoch without an aligned batch)
SINKHORN_COLUMNS = ("sinkhorn_iters", "sinkhorn_marginal_err")


def evaluation_keys() -> tuple[str, ...]:
    """Every key an evaluation can add to a report: <split>_<metric> for each split and metric."""
    names = [*COMMON_METRICS, *(m for metrics in EVALUATION_METRICS.values() for m in metrics)]
    return tuple(f"{split}_{name}" for split in EVALUATED_SPLITS for name in names)
