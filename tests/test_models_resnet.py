"""Our ImageNet ResNets are drop-in torchvision models: same state_dict (names, shapes, order), and the
same logits as torchvision under the fixture's RNG-free weight fill."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from resnet_serve.models import registry
from resnet_serve.models.blocks import Bottleneck
from resnet_serve.models.fill import filled_state_dict, fixture_input

FIXTURES = Path(__file__).parent / "fixtures" / "torchvision-resnet"
FAST = ["resnet18", "resnet34", "resnet50", "resnext50_32x4d"]
SLOW = ["resnet101", "resnet152", "wide_resnet50_2"]
ARCHS = FAST + [pytest.param(a, marks=pytest.mark.slow) for a in SLOW]


def _fixture(arch: str) -> dict[str, Any]:
    with (FIXTURES / f"{arch}.json").open() as f:
        return dict(json.load(f))


@pytest.mark.parametrize("arch", FAST + SLOW)
def test_state_dict_keys_shapes_and_order_are_torchvisions(arch: str) -> None:
    ref = _fixture(arch)
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = registry.build(arch)
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert ours == ref["keys"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]


@pytest.mark.parametrize("arch", ARCHS)
def test_filled_weights_load_strictly_and_match_golden_logits(arch: str) -> None:
    ref = _fixture(arch)
    with torch.device("meta"):  # skip the random init: every entry gets the fill
        model = registry.build(arch)
    state = filled_state_dict(model)
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)
    with torch.inference_mode():
        logits = model.eval()(fixture_input(ref["input"]["batch"], ref["input"]["size"]))
    golden = torch.tensor(ref["logits"], dtype=torch.float32)
    assert logits.shape == golden.shape
    tolerance = 1e-4 * golden.abs().max().item() + 1e-5
    assert (logits - golden).abs().max().item() <= tolerance
    assert logits.argmax(1).tolist() == golden.argmax(1).tolist()


def test_zero_init_residual_zeroes_each_blocks_last_batchnorm() -> None:
    model = registry.build("resnet50", zero_init_residual=True)
    last_bns = [m.bn3.weight for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(last_bns) == 16 and all(bool((w == 0).all()) for w in last_bns)
    assert bool((registry.build("resnet50").get_parameter("layer1.0.bn3.weight") == 1).all())


def test_resnet50_is_v1_5_with_the_stride_on_the_3x3() -> None:
    block = registry.build("resnet50").get_submodule("layer2.0")
    assert isinstance(block, Bottleneck)
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)


def test_num_classes_and_in_chans_change_only_the_head_and_stem() -> None:
    model = registry.build("resnet18", num_classes=7, in_chans=1)
    assert model.get_parameter("conv1.weight").shape == (64, 1, 7, 7)
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 7)


def test_groups_and_width_per_group_shape_the_bottleneck() -> None:
    model = registry.build("resnet50", groups=8, width_per_group=16)
    conv = model.get_submodule("layer1.0.conv2")
    assert isinstance(conv, torch.nn.Conv2d)
    assert conv.groups == 8 and conv.in_channels == 128
