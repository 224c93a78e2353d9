"""CIFAR ResNets (He et al. 2016, 6n+2 layers) as defined in RepDistiller ``models/resnet.py``.

Source: https://github.com/HobbitLong/RepDistiller (Tian et al., "Contrastive Representation
Distillation", ICLR 2020), also used verbatim by mdistiller. Module names (``conv1``, ``bn1``,
``layer{i}.{j}.conv1`` ...) match theirs, so their checkpoints load once ``fc.`` is renamed ``classifier.``.

:func:`build_cifar_resnet` is the general form (any number of stages, any per-stage depth and width,
basic or bottleneck blocks); the search spaces build their candidates with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdnas.errors import ConfigError
from kdnas.models.features import FeatureNet, Features, pool_and_classify
from kdnas.models.registry import register_model


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    """Option-B shortcut: 1x1 conv + BN when the shape changes, identity (None) otherwise."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two kxk convs; returns ``(out, preact)`` where preact is the residual sum before the final ReLU."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(in_ch, planes, kernel_size, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(in_ch, planes, stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        preact = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(preact), preact


class Bottleneck(nn.Module):
    """1x1 reduce, kxk, 1x1 expand (x4); returns ``(out, preact)`` like :class:`BasicBlock`."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        preact = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(preact), preact


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class CifarResNet(FeatureNet):
    """3x3 stem (stride 1) -> stages of blocks (stride 1, then 2 at each later stage) -> pool -> linear.

    ``stages`` = [stem output, then each stage's preact]; ``feature_map`` = the last stage after ReLU.
    """

    def __init__(
        self,
        depths: list[int],
        widths: list[int],
        num_classes: int,
        stem_width: int | None = None,
        block: str = "basic",
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if not depths or len(depths) != len(widths):
            raise ConfigError(f"ResNet needs one width per stage, got depths={depths} widths={widths}")
        if min(depths) < 1 or min(widths) < 1:
            raise ConfigError(f"ResNet stage depths and widths must be >= 1, got {depths} / {widths}")
        if block not in BLOCKS:
            raise ConfigError(f"Unknown ResNet block {block!r}; choose one of {sorted(BLOCKS)}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"ResNet kernel_size must be odd and positive, got {kernel_size}")
        block_cls = BLOCKS[block]
        stem_width = stem_width or widths[0]
        self.num_classes = num_classes
        self.num_stages = len(depths)
        self.conv1 = nn.Conv2d(3, stem_width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        in_ch = stem_width
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block_cls(in_ch, width, stride, kernel_size))
                in_ch = width * block_cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.stage_channels = [stem_width] + [w * block_cls.expansion for w in widths]
        self.classifier = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x: torch.Tensor) -> Features:
        x = F.relu(self.bn1(self.conv1(x)))
        stages = [x]
        for i in range(1, self.num_stages + 1):
            for blk in getattr(self, f"layer{i}"):
                x, preact = blk(x)
            stages.append(preact)
        return pool_and_classify(self, stages, x)


def build_cifar_resnet(
    depths: list[int],
    widths: list[int],
    num_classes: int,
    stem_width: int | None = None,
    block: str = "basic",
    kernel_size: int = 3,
) -> CifarResNet:
    """A CIFAR ResNet with arbitrary per-stage ``depths`` (blocks, >= 1) and ``widths`` (block planes;
    bottleneck stages output 4x that). ``stem_width`` defaults to ``widths[0]``."""
    return CifarResNet(depths, widths, num_classes, stem_width, block, kernel_size)


def _resnet(depth: int, filters: list[int], num_classes: int) -> CifarResNet:
    """RepDistiller's ``ResNet(depth, num_filters)``: filters = [stem, stage1, stage2, stage3]."""
    assert (depth - 2) % 6 == 0, "basic-block CIFAR ResNet depth must be 6n+2"
    n = (depth - 2) // 6
    return CifarResNet([n, n, n], filters[1:], num_classes, stem_width=filters[0])


@register_model
def resnet8(num_classes: int = 100) -> CifarResNet:
    return _resnet(8, [16, 16, 32, 64], num_classes)


@register_model
def resnet14(num_classes: int = 100) -> CifarResNet:
    return _resnet(14, [16, 16, 32, 64], num_classes)


@register_model
def resnet20(num_classes: int = 100) -> CifarResNet:
    return _resnet(20, [16, 16, 32, 64], num_classes)


@register_model
def resnet32(num_classes: int = 100) -> CifarResNet:
    return _resnet(32, [16, 16, 32, 64], num_classes)


@register_model
def resnet44(num_classes: int = 100) -> CifarResNet:
    return _resnet(44, [16, 16, 32, 64], num_classes)


@register_model
def resnet56(num_classes: int = 100) -> CifarResNet:
    return _resnet(56, [16, 16, 32, 64], num_classes)


@register_model
def resnet110(num_classes: int = 100) -> CifarResNet:
    return _resnet(110, [16, 16, 32, 64], num_classes)


@register_model
def resnet8x4(num_classes: int = 100) -> CifarResNet:
    return _resnet(8, [32, 64, 128, 256], num_classes)


@register_model
def resnet32x4(num_classes: int = 100) -> CifarResNet:
    return _resnet(32, [32, 64, 128, 256], num_classes)
