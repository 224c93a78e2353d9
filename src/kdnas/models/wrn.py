"""Wide ResNets (Zagoruyko & Komodakis 2016, pre-activation, depth 6n+4) as in RepDistiller ``models/wrn.py``.

Source: https://github.com/HobbitLong/RepDistiller (itself after Wei Yang's port). Module names match,
so RepDistiller checkpoints load once ``fc.`` is renamed ``classifier.``. Dropout (0 in all their
configs) is left out.

``stages`` = [stem conv, block1, block2, block3] outputs: in a pre-activation net these are already
pre-activation (the last one is before the final BN-ReLU); ``feature_map`` is after that BN-ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdnas.models.features import FeatureNet, Features, pool_and_classify
from kdnas.models.registry import register_model


class BasicBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv; when the shape changes the shortcut is a 1x1 conv of the activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        shape_changes = in_planes != out_planes
        self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride, bias=False) if shape_changes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class NetworkBlock(nn.Module):
    """One stage of ``n`` blocks, the first one strided (kept as a class for RepDistiller's key names)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        blocks = [BasicBlock(in_planes, out_planes, stride)]
        blocks += [BasicBlock(out_planes, out_planes, 1) for _ in range(n - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(FeatureNet):
    def __init__(self, depth: int, widen_factor: int, num_classes: int) -> None:
        super().__init__()
        assert (depth - 4) % 6 == 0, "WRN depth must be 6n+4"
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.stage_channels = ch
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.classifier = nn.Linear(ch[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> Features:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        return pool_and_classify(self, [f0, f1, f2, f3], F.relu(self.bn1(f3)))


@register_model
def wrn_16_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 1, num_classes)


@register_model
def wrn_16_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 2, num_classes)


@register_model
def wrn_40_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 1, num_classes)


@register_model
def wrn_40_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 2, num_classes)
