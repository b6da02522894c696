"""Training recipes: the six published configurations of the release, with their published top-1 accuracy and
learning-curve points, and a quick digits recipe for a CPU.

The published recipes keep the release's Sinkhorn (absolute eps 0.1 on raw features, cost_scaling "none", at
most 100 iterations, the release's stopping rule), mix at {input, last stage} and follow the release's protocol:
the whole training set (val_fraction 0), the test split every epoch, the best and the final test accuracy
reported. `--val-fraction 0.1` on top of one selects on a validation split instead.
"""

from __future__ import annotations

from typing import Any

_CIFAR: dict[str, Any] = dict(
    epochs=2000, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, lr_schedule="step",
    milestones=[500, 1000, 1500], gammas=[0.1, 0.1, 0.1], alpha=2.0, seed=8492, val_fraction=0.0,
)

PUBLISHED_RECIPES: dict[str, dict[str, Any]] = {
    "cifar10-preactresnet18": dict(_CIFAR, dataset="cifar10", network="preactresnet18", mix_layers=[0, 4]),
    "cifar10-wrn16_8": dict(_CIFAR, dataset="cifar10", network="wrn16_8", mix_layers=[0, 3]),
    "cifar100-preactresnet18": dict(_CIFAR, dataset="cifar100", network="preactresnet18", mix_layers=[0, 4]),
    "cifar100-wrn16_8": dict(_CIFAR, dataset="cifar100", network="wrn16_8", mix_layers=[0, 3]),
    "tinyimagenet-preactresnet18": dict(
        _CIFAR, dataset="tinyimagenet", network="preactresnet18", mix_layers=[0, 4], epochs=1200, batch_size=256,
        milestones=[600, 900], gammas=[0.1, 0.1],
    ),
    "imagenet-resnet50": dict(
        _CIFAR, dataset="imagenet", network="resnet50", mix_layers=[0, 4], epochs=300, batch_size=1024,
        nesterov=True, milestones=[75, 150, 225], gammas=[0.1, 0.1, 0.1],
    ),
}

# A couple of minutes on a 2-core CPU to about 99% validation accuracy (99.3% measured): a bare `alignmixup-train`.
DIGITS_RECIPE: dict[str, Any] = dict(
    dataset="digits", network="preactresnet18", width=0.25, epochs=15, batch_size=64, lr=0.05, lr_schedule="cosine",
)

RECIPES: dict[str, dict[str, Any]] = {**PUBLISHED_RECIPES, "digits-preactresnet18": DIGITS_RECIPE}

PUBLISHED_TOP1: dict[str, float] = {
    "cifar10-preactresnet18": 97.05,
    "cifar10-wrn16_8": 96.91,
    "cifar100-preactresnet18": 81.71,
    "cifar100-wrn16_8": 81.23,
    "tinyimagenet-preactresnet18": 66.87,
    "imagenet-resnet50": 79.32,
}

# Test top-1 at 0-based epochs, from the release's logs: what an ASHA rung at that epoch can be checked against.
RELEASE_CURVES: dict[str, dict[int, float]] = {
    "cifar10-preactresnet18": {0: 43.6, 100: 91.0, 500: 94.9, 1000: 96.1},
    "cifar100-preactresnet18": {0: 12.2, 100: 68.9, 500: 76.9, 1000: 80.0},
    "tinyimagenet-preactresnet18": {0: 10.7, 100: 55.6, 600: 63.7, 1000: 65.3},
}


def recipe_name(dataset: str, network: str) -> str | None:
    """The recipe of a (data set, network) pair, or None when none is published."""
    return next((name for name, r in RECIPES.items() if (r["dataset"], r["network"]) == (dataset, network)), None)


def recipe_for(dataset: str, network: str | None) -> dict[str, Any]:
    """Training settings for a data set and network: its recipe, else the data set's recipe with that network.

    Borrowing another network's recipe drops its mixing layers (they are per network: the default is the
    release's {input, last stage} of the network actually used).
    """
    own = recipe_name(dataset, network) if network else None
    if own is not None:
        return dict(RECIPES[own])
    base = next((dict(r) for r in RECIPES.values() if r["dataset"] == dataset), {"dataset": dataset})
    if network is not None and base.get("network") != network:
        base.update(network=network)
        base.pop("mix_layers", None)
    return base
