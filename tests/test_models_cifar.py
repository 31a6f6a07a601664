"""CIFAR-style ResNets (6n+2 layers, 16/32/64 channels, option-B shortcuts) and the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnet_serve.models import registry
from resnet_serve.models.errors import ModelConfigError, UnknownArchitectureError

CIFAR = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}


@pytest.mark.parametrize(("arch", "depth"), CIFAR.items())
def test_cifar_resnets_have_6n_plus_2_weighted_layers(arch: str, depth: int) -> None:
    model = registry.build(arch)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 3x3 convolutions plus the classifier; shortcuts are not counted
    assert {c.out_channels for c in convs} == {16, 32, 64}


def test_cifar_resnet_uses_projection_shortcuts_where_the_shape_changes() -> None:
    model = registry.build("resnet20")
    shortcuts = [name for name, m in model.named_modules() if name.endswith("downsample")]
    assert shortcuts == ["layer2.0.downsample", "layer3.0.downsample"]
    conv, bn = model.get_submodule("layer2.0.downsample.0"), model.get_submodule("layer2.0.downsample.1")
    assert isinstance(conv, nn.Conv2d)
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and isinstance(bn, nn.BatchNorm2d)


def test_cifar_resnet_maps_32x32_to_logits_with_in_chans_and_num_classes() -> None:
    model = registry.build("resnet20", num_classes=7, in_chans=1).eval()
    assert model(torch.zeros(3, 1, 32, 32)).shape == (3, 7)
    stages = nn.Sequential(*(model.get_submodule(f"layer{i}") for i in (1, 2, 3)))
    assert stages(torch.zeros(1, 16, 32, 32)).shape == (1, 64, 8, 8)


def test_zero_init_residual_starts_each_block_as_the_identity() -> None:
    model = registry.build("resnet20", zero_init_residual=True).eval()
    block = model.get_submodule("layer1.0")
    x = torch.rand(2, 16, 8, 8)
    assert torch.equal(block(x), torch.relu(x))


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(UnknownArchitectureError) as err:
        registry.build("resnet21")
    message = str(err.value)
    assert "\n" not in message and "'resnet21'" in message
    assert all(name in message for name in registry.names())
    assert registry.names()[:5] == list(CIFAR) and "resnext50_32x4d" in registry.names()


def test_a_config_key_the_architecture_does_not_take_is_a_clear_error() -> None:
    with pytest.raises(ModelConfigError, match="resnet20"):
        registry.build("resnet20", groups=4)
