"""Networks: the release's PreActResNet-18 block, stage counts and map sizes, ResNet-50 against torchvision."""

import pytest
import torch
from torch import nn

from alignmixup.models import MODELS, PreActBlock, TextbookPreActBlock, build_model

# (network, input size, classes) -> spatial size after each stage
MAPS = {
    ("preactresnet18", 32, 10): [32, 16, 8, 4],
    ("preactresnet18", 64, 200): [64, 32, 16, 8],
    ("preactresnet18_textbook", 32, 10): [32, 16, 8, 4],
    ("wrn16_8", 32, 10): [32, 16, 8],
    ("resnet50", 224, 1000): [56, 28, 14, 7],
}


def _randomise_bn(module: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so relu(bn1(x)) differs clearly from x."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))


@pytest.mark.parametrize("block_type,carries_input", [(PreActBlock, False), (TextbookPreActBlock, True)])
def test_identity_shortcut_of_each_block(block_type, carries_input):
    block = block_type(8, 8, 1).eval()
    _randomise_bn(block, 0)
    x = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pre = torch.relu(block.bn1(x))
        branch = block.conv2(torch.relu(block.bn2(block.conv1(pre))))
        expected = branch + (x if carries_input else pre)
        torch.testing.assert_close(block(x), expected)
        other = branch + (pre if carries_input else x)
        assert not torch.allclose(block(x), other)


def test_projection_shortcut_starts_from_relu_bn1_in_both():
    for block_type in (PreActBlock, TextbookPreActBlock):
        block = block_type(4, 8, 2).eval()
        _randomise_bn(block, 2)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            pre = torch.relu(block.bn1(x))
            expected = block.conv2(torch.relu(block.bn2(block.conv1(pre)))) + block.shortcut(pre)
            torch.testing.assert_close(block(x), expected)


def test_release_network_has_five_relu_bn1_identity_shortcuts_and_the_published_parameter_count():
    release, textbook = build_model("preactresnet18", 10), build_model("preactresnet18_textbook", 10)
    blocks = [m for m in release.modules() if isinstance(m, PreActBlock)]
    assert len(blocks) == 8 and sum(isinstance(b.shortcut, nn.Identity) for b in blocks) == 5
    count = sum(p.numel() for p in release.parameters())
    assert count == sum(p.numel() for p in textbook.parameters()) == 11_171_274
    textbook.load_state_dict(release.state_dict())  # same parameters, different function
    release.eval(), textbook.eval()
    _randomise_bn(release, 4), _randomise_bn(textbook, 4)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert not torch.allclose(release(x), textbook(x))


@pytest.mark.parametrize("key", list(MAPS))
def test_stage_count_and_map_sizes(key):
    name, size, classes = key
    net = build_model(name, classes, width=0.125).eval()
    assert net.num_stages == MODELS[name].num_stages == len(MAPS[key])
    seen: dict[int, torch.Size] = {}

    def hook(layer: int, h: torch.Tensor) -> torch.Tensor:
        seen[layer] = h.shape
        return h

    with torch.no_grad():
        logits = net(torch.randn(2, 3, size, size), hook)
    assert logits.shape == (2, classes)
    assert [seen[k][-1] for k in range(1, net.num_stages + 1)] == MAPS[key]
    assert seen[0] == (2, 3, size, size)


def test_resnet50_equals_torchvision_resnet50():
    from torchvision.models import resnet50 as tv_resnet50

    ours, theirs = build_model("resnet50", 1000).eval(), tv_resnet50().eval()
    mapping = {"conv1.": "stem.0.", "bn1.": "stem.1.", "fc.": "head.2."}
    mapping |= {f"layer{k}.": f"stages.{k - 1}." for k in range(1, 5)}
    state = {}
    for key, value in theirs.state_dict().items():
        prefix = next(p for p in mapping if key.startswith(p))
        state[mapping[prefix] + key.removeprefix(prefix)] = value
    ours.load_state_dict(state)  # strict: the same layers, one for one
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)
