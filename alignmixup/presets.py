"""The six published configurations with the release's recipes, and their published top-1 accuracy.

All keep the release's Sinkhorn (absolute eps 0.1 on raw features, cost_scaling "none", at most 100
iterations, the release's stopping rule) and mix at {input, last stage}, so that a run reproduces the
paper; `eval_test="every"` because the release reports the best test accuracy over all epochs.
"""

from __future__ import annotations

from typing import Any

_CIFAR: dict[str, Any] = dict(
    epochs=2000, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, lr_schedule="step",
    milestones=[500, 1000, 1500], gammas=[0.1, 0.1, 0.1], alpha=2.0, seed=8492, eval_test="every",
)

PRESETS: dict[str, dict[str, Any]] = {
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

PUBLISHED_TOP1: dict[str, float] = {
    "cifar10-preactresnet18": 97.05,
    "cifar10-wrn16_8": 96.91,
    "cifar100-preactresnet18": 81.71,
    "cifar100-wrn16_8": 81.23,
    "tinyimagenet-preactresnet18": 66.87,
    "imagenet-resnet50": 79.32,
}
