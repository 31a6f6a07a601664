"""BatchNorm folding: same function, no BatchNorm left, input untouched, training mode refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from resnet_serve.models import registry
from resnet_serve.models.fold import FoldError, fold_batchnorm


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial statistics, so folding that ignored μ, σ², γ or β would change the output."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.weight is not None:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


class _Tiny(nn.Module):
    """Not a ResNet: input BatchNorm, biased conv, grouped conv, a conv read twice, Linear→BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(3)
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1, bias=True)
        self.bn_a = nn.BatchNorm2d(8)
        self.conv_g = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
        self.bn_g = nn.BatchNorm2d(8, affine=False)
        self.conv_shared = nn.Conv2d(8, 8, 1)
        self.bn_shared = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)
        self.bn_fc = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_a(self.conv_a(self.bn_in(x))))
        x = torch.relu(self.bn_g(self.conv_g(x)))
        y = self.conv_shared(x)
        # The conv output also feeds the residual: its BatchNorm must not be folded into the conv.
        x = self.bn_shared(y) + y
        out: torch.Tensor = self.bn_fc(self.fc(x.mean(dim=(2, 3))))
        return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_folding_a_non_resnet_keeps_its_outputs_and_removes_every_batchnorm() -> None:
    torch.manual_seed(0)
    model = _randomise_batchnorm(_Tiny()).eval()
    folded = fold_batchnorm(model)
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        assert _rel(folded(x), model(x)) <= 1e-5
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())


def test_folding_does_not_modify_its_input() -> None:
    model = _randomise_batchnorm(_Tiny()).eval()
    before = copy.deepcopy(model.state_dict())
    fold_batchnorm(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.bn_a, nn.BatchNorm2d)


def test_folding_refuses_a_model_in_training_mode() -> None:
    model = _Tiny().eval()
    model.bn_g.train()
    with pytest.raises(FoldError, match="eval mode"):
        fold_batchnorm(model)


def test_folded_conv_weights_follow_the_formula() -> None:
    conv, bn = nn.Conv2d(2, 3, 1, bias=True), nn.BatchNorm2d(3, eps=1e-3)
    model = _randomise_batchnorm(nn.Sequential(conv, bn)).eval()
    folded = fold_batchnorm(model)
    new_conv = folded.get_submodule("0")
    assert isinstance(new_conv, nn.Conv2d)
    assert bn.running_var is not None and bn.running_mean is not None and conv.bias is not None
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + 1e-3)
    expected_w = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
    expected_b = (conv.bias.double() - bn.running_mean.double()) * scale + bn.bias.double()
    torch.testing.assert_close(new_conv.weight.double(), expected_w, rtol=1e-6, atol=1e-7)
    assert new_conv.bias is not None
    torch.testing.assert_close(new_conv.bias.double(), expected_b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("arch", ["resnet20", "resnet18", "resnext50_32x4d"])
def test_folding_our_resnets_matches_the_unfolded_model(arch: str) -> None:
    # Stems, basic and bottleneck blocks, downsample shortcuts and grouped convs: all folded, same logits.
    torch.manual_seed(1)
    size = 32 if arch in registry.SMALL_INPUT else 64
    model = _randomise_batchnorm(registry.build(arch, num_classes=10)).eval()
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert _rel(folded(x), model(x)) <= 1e-4
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on values: torch.fx cannot trace it
            x = -x
        out: torch.Tensor = self.bn(self.conv(x))
        return out


def test_an_untraceable_model_is_refused_with_a_clear_error() -> None:
    with pytest.raises(FoldError, match="cannot trace _DataDependent"):
        fold_batchnorm(_DataDependent().eval())
