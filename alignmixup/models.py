"""Networks with a stage API (stem, residual stages 1..K, pooled head) and a registry.

Mixing may happen at layer 0 (the input) or after any stage k; `StagedNet.forward` calls the mixing
hook at each of those points, so the hook passes through DDP's forward like any argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

MixHook = Callable[[int, torch.Tensor], torch.Tensor]


class StagedNet(nn.Module):
    """stem -> stages[0..K-1] -> head, with an optional mixing hook at layers 0..K."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def forward(self, x: torch.Tensor, mix: MixHook | None = None) -> torch.Tensor:
        if mix is not None:
            x = mix(0, x)
        h = self.stem(x)
        for k, stage in enumerate(self.stages, start=1):
            h = stage(h)
            if mix is not None:
                h = mix(k, h)
        return self.head(h)


def _head(features: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(features, num_classes))


def _conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class PreActBlock(nn.Module):
    """Pre-activation basic block as the release builds it: the shortcut always starts from relu(bn1(x)).

    The release's shortcut is a module in every block (an empty `nn.Sequential()` where shapes match) applied to
    `out = relu(bn1(x))`, so an identity shortcut adds `relu(bn1(x))`, not `x`. The published accuracies come from
    this network. `identity_from_input=True` gives the textbook block of He et al. 2016 (identity carries `x`).
    """

    def __init__(self, cin: int, cout: int, stride: int, identity_from_input: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        projected = stride != 1 or cin != cout
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if projected else nn.Identity()
        self.identity_from_input = identity_from_input and not projected

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        short = x if self.identity_from_input else self.shortcut(out)
        out = self.conv2(torch.relu(self.bn2(self.conv1(out))))
        return out + short


class TextbookPreActBlock(PreActBlock):
    """The pre-activation block of He et al. 2016: an identity shortcut carries the block's input `x`."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(cin, cout, stride, identity_from_input=True)


class WideBlock(nn.Module):
    """WRN basic block of the release (pre-activation, biased convs, stride on the second conv)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, bias=True)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout, stride, bias=True)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=True) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
        return out + (self.shortcut(x) if self.shortcut is not None else x)


def _stage(block: Callable[[int, int, int], nn.Module], cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*[block(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])


def _widths(base: tuple[int, ...], width: float) -> list[int]:
    return [max(4, round(c * width)) for c in base]


def _preactresnet18(block: type[PreActBlock], num_classes: int, width: float, in_channels: int) -> StagedNet:
    c0, c1, c2, c3, c4 = _widths((64, 64, 128, 256, 512), width)
    stem = nn.Sequential(_conv3x3(in_channels, c0), nn.BatchNorm2d(c0), nn.ReLU(inplace=True))
    plan = ((c0, c1, 1), (c1, c2, 2), (c2, c3, 2), (c3, c4, 2))
    stages = [_stage(block, cin, cout, 2, s) for cin, cout, s in plan]
    return StagedNet(stem, stages, _head(c4, num_classes))


def preactresnet18(num_classes: int, width: float = 1.0, in_channels: int = 3) -> StagedNet:
    """PreActResNet-18 of the release (CIFAR stem, no max-pool, its PreActBlock); 4x4 final map at 32x32."""
    return _preactresnet18(PreActBlock, num_classes, width, in_channels)


def preactresnet18_textbook(num_classes: int, width: float = 1.0, in_channels: int = 3) -> StagedNet:
    """PreActResNet-18 with the textbook block (identity shortcuts carry x, He et al. 2016); same parameters."""
    return _preactresnet18(TextbookPreActBlock, num_classes, width, in_channels)


def wrn16_8(num_classes: int, width: float = 1.0, in_channels: int = 3) -> StagedNet:
    """WRN-16-8 of the release: stages 128/256/512, final BN-ReLU inside stage 3, 8x8 map at 32x32."""
    c0, c1, c2, c3 = _widths((16, 128, 256, 512), width)
    stages = [_stage(WideBlock, cin, cout, 2, s) for cin, cout, s in ((c0, c1, 1), (c1, c2, 2), (c2, c3, 2))]
    # The release's final BN uses momentum 0.9 (PyTorch convention: weight of the new batch statistics).
    stages[-1].append(nn.Sequential(nn.BatchNorm2d(c3, momentum=0.9), nn.ReLU(inplace=True)))
    return StagedNet(_conv3x3(in_channels, c0, bias=True), stages, _head(c3, num_classes))


def resnet50(num_classes: int, width: float = 1.0, in_channels: int = 3) -> StagedNet:
    """ResNet-50 from torchvision's Bottleneck blocks; at width 1 the layers equal torchvision's resnet50."""
    from torchvision.models.resnet import Bottleneck  # here: importing torchvision costs every process ~1.5 s

    c0, *planes = _widths((64, 64, 128, 256, 512), width)
    stem = nn.Sequential(
        nn.Conv2d(in_channels, c0, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(c0),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    stages, cin = [], c0
    for p, n, s in zip(planes, (3, 4, 6, 3), (1, 2, 2, 2), strict=True):
        blocks = []
        for i in range(n):
            down = None
            if i == 0 and (s != 1 or cin != p * Bottleneck.expansion):
                down = nn.Sequential(
                    nn.Conv2d(cin, p * Bottleneck.expansion, 1, stride=s, bias=False),
                    nn.BatchNorm2d(p * Bottleneck.expansion),
                )
            blocks.append(Bottleneck(cin, p, stride=s if i == 0 else 1, downsample=down))
            cin = p * Bottleneck.expansion
        stages.append(nn.Sequential(*blocks))
    net = StagedNet(stem, stages, _head(cin, num_classes))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


@dataclass(frozen=True)
class ModelSpec:
    """A registered network: its builder and how many residual stages it has."""

    build: Callable[..., StagedNet]
    num_stages: int


MODELS: dict[str, ModelSpec] = {
    "preactresnet18": ModelSpec(preactresnet18, 4),
    "preactresnet18_textbook": ModelSpec(preactresnet18_textbook, 4),
    "wrn16_8": ModelSpec(wrn16_8, 3),
    "resnet50": ModelSpec(resnet50, 4),
}


def build_model(name: str, num_classes: int, width: float = 1.0, in_channels: int = 3) -> StagedNet:
    """Instantiate a registered network."""
    return MODELS[name].build(num_classes, width=width, in_channels=in_channels)
