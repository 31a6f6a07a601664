"""ImageNet ResNets whose ``state_dict`` is exactly torchvision's (names, shapes and order).

A torchvision checkpoint (e.g. ImageNet-pretrained ``resnet50-*.pth``) therefore loads with
``load_state_dict(strict=True)`` and gives the same logits. ResNet-50 and deeper are v1.5: the stride of a
downsampling bottleneck sits on its 3×3 convolution, not on the first 1×1.
"""

from __future__ import annotations

import torch
from torch import nn

from resnet_serve.models.blocks import BasicBlock, Block, Bottleneck, init_weights, projection


class ResNet(nn.Module):
    """7×7/2 stem + 3×3/2 max pool, four stages (64·e, 128·e, 256·e, 512·e channels), global pool, fc."""

    def __init__(
        self,
        block: Block,
        layers: list[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        replace_stride_with_dilation: list[bool] | None = None,
    ) -> None:
        super().__init__()
        dilate = replace_stride_with_dilation or [False, False, False]
        if len(dilate) != 3:
            raise ValueError(f"replace_stride_with_dilation needs 3 entries, got {dilate}")
        self.inplanes = 64
        self.dilation = 1
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(in_chans, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=dilate[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self, zero_init_residual)

    def _make_layer(
        self,
        block: Block,
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        out = planes * block.expansion
        downsample = projection(self.inplanes, out, stride) if stride != 1 or self.inplanes != out else None
        layers: list[nn.Module] = [
            block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation)
        ]
        self.inplanes = out
        layers += [
            block(
                self.inplanes, planes, groups=self.groups, base_width=self.base_width, dilation=self.dilation
            )
            for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        logits: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return logits


def resnet18(num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18 (11.7 M parameters at 1000 classes)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_chans, zero_init_residual)


def resnet34(num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNet-34 (21.8 M parameters)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_chans, zero_init_residual)


def resnet50(
    num_classes: int = 1000,
    in_chans: int = 3,
    zero_init_residual: bool = False,
    groups: int = 1,
    width_per_group: int = 64,
) -> ResNet:
    """ResNet-50 v1.5 (25.6 M parameters)."""
    return ResNet(
        Bottleneck, [3, 4, 6, 3], num_classes, in_chans, zero_init_residual, groups, width_per_group
    )


def resnet101(
    num_classes: int = 1000,
    in_chans: int = 3,
    zero_init_residual: bool = False,
    groups: int = 1,
    width_per_group: int = 64,
) -> ResNet:
    """ResNet-101 v1.5 (44.5 M parameters)."""
    return ResNet(
        Bottleneck, [3, 4, 23, 3], num_classes, in_chans, zero_init_residual, groups, width_per_group
    )


def resnet152(
    num_classes: int = 1000,
    in_chans: int = 3,
    zero_init_residual: bool = False,
    groups: int = 1,
    width_per_group: int = 64,
) -> ResNet:
    """ResNet-152 v1.5 (60.2 M parameters)."""
    return ResNet(
        Bottleneck, [3, 8, 36, 3], num_classes, in_chans, zero_init_residual, groups, width_per_group
    )


def wide_resnet50_2(num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False) -> ResNet:
    """Wide ResNet-50-2: bottleneck width doubled (68.9 M parameters)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_chans, zero_init_residual, width_per_group=128)


def resnext50_32x4d(num_classes: int = 1000, in_chans: int = 3, zero_init_residual: bool = False) -> ResNet:
    """ResNeXt-50 32×4d: 32 groups of width 4 in each bottleneck's 3×3 (25.0 M parameters)."""
    return ResNet(
        Bottleneck, [3, 4, 6, 3], num_classes, in_chans, zero_init_residual, groups=32, width_per_group=4
    )
