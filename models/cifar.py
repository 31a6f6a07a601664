"""CIFAR-style ResNets (He et al. 2016, §4.2): 6n+2 layers, 16/32/64 channels, 32×32 inputs.

Shortcuts where the shape changes are option B (1×1 conv + BN), so the blocks are the same
:class:`~models.blocks.BasicBlock` as the ImageNet models and BatchNorm folding treats both alike.
"""

from __future__ import annotations

import torch
from torch import nn

from resnet_serve.models.blocks import BasicBlock, conv3x3, init_weights, projection


class CifarResNet(nn.Module):
    """3×3 stem, three stages of ``n`` BasicBlocks (16, 32, 64 channels; stride 1, 2, 2), global pool, fc."""

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_chans: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_chans, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = 16
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        init_weights(self, zero_init_residual)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = (
            projection(self.inplanes, planes, stride) if stride != 1 or self.inplanes != planes else None
        )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        logits: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return logits


def _cifar(depth: int, num_classes: int, in_chans: int, zero_init_residual: bool) -> CifarResNet:
    return CifarResNet(
        depth, num_classes=num_classes, in_chans=in_chans, zero_init_residual=zero_init_residual
    )


def resnet20(num_classes: int = 10, in_chans: int = 3, zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-20 (n=3, 0.27 M parameters)."""
    return _cifar(20, num_classes, in_chans, zero_init_residual)


def resnet32(num_classes: int = 10, in_chans: int = 3, zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-32 (n=5, 0.46 M parameters)."""
    return _cifar(32, num_classes, in_chans, zero_init_residual)


def resnet44(num_classes: int = 10, in_chans: int = 3, zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-44 (n=7, 0.66 M parameters)."""
    return _cifar(44, num_classes, in_chans, zero_init_residual)


def resnet56(num_classes: int = 10, in_chans: int = 3, zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-56 (n=9, 0.85 M parameters)."""
    return _cifar(56, num_classes, in_chans, zero_init_residual)


def resnet110(num_classes: int = 10, in_chans: int = 3, zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-110 (n=18, 1.7 M parameters)."""
    return _cifar(110, num_classes, in_chans, zero_init_residual)
