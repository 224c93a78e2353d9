"""ShuffleNet V1 and V2 for CIFAR as in RepDistiller (after kuangliu/pytorch-cifar); module names match theirs
(docs/decisions.md, "Models").

``stages`` = [stem, then each stage's last-block preact]: the sum (or concat) before the final ReLU for V1; for V2
the concat [identity half, last BN] before ReLU and channel shuffle.

Reference: Zhang et al. 2018; Ma et al. 2018; https://github.com/HobbitLong/RepDistiller ``models/ShuffleNetv1.py``,
``models/ShuffleNetv2.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdnas.models.features import FeatureNet, Features, pool_and_classify
from kdnas.models.registry import register_model


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, g, C/g, H, W] -> [N, C/g, g, H, W] -> [N, C, H, W]."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Block(nn.Module):
    """Grouped 1x1, shuffle, 3x3 depthwise, grouped 1x1; stride 2 concatenates an avg-pooled shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_planes // 4
        self.stride = stride
        self.g1 = 1 if in_planes == 24 else groups  # no grouping right after the 24-channel stem
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        preact = torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1) if self.stride == 2 else out + x
        return F.relu(preact), preact


class ShuffleNetV1(FeatureNet):
    def __init__(
        self, num_classes: int, out_planes: tuple[int, ...], num_blocks: tuple[int, ...], groups: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        for i, (planes, n) in enumerate(zip(out_planes, num_blocks)):
            # The first (stride-2) block concatenates its input, so it only produces planes - in_planes.
            blocks = [ShuffleV1Block(in_planes, planes - in_planes, 2, groups)]
            blocks += [ShuffleV1Block(planes, planes, 1, groups) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            in_planes = planes
        self.num_classes = num_classes
        self.stage_channels = [24, *out_planes]
        self.classifier = nn.Linear(out_planes[-1], num_classes)

    def forward_features(self, x: torch.Tensor) -> Features:
        x = F.relu(self.bn1(self.conv1(x)))
        stages = [x]
        for layer in (self.layer1, self.layer2, self.layer3):
            for blk in layer:
                x, preact = blk(x)
            stages.append(preact)
        return pool_and_classify(self, stages, x)


class ShuffleV2Block(nn.Module):
    """Split channels in half, transform one half (1x1, 3x3 dw, 1x1), concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x.chunk(2, dim=1)
        out = self.bn3(self.conv3(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))))
        preact = torch.cat([x1, out], 1)
        return channel_shuffle(torch.cat([x1, F.relu(out)], 1), 2), preact


class ShuffleV2DownBlock(nn.Module):
    """Stride-2 unit: both branches see the whole input, each produces half of ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(FeatureNet):
    def __init__(self, num_classes: int, out_channels: tuple[int, ...], num_blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_ch = 24
        for i, (ch, n) in enumerate(zip(out_channels[:3], num_blocks)):
            blocks = [ShuffleV2DownBlock(in_ch, ch)] + [ShuffleV2Block(ch) for _ in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            in_ch = ch
        self.conv2 = nn.Conv2d(in_ch, out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.num_classes = num_classes
        self.stage_channels = [24, *out_channels[:3]]
        self.classifier = nn.Linear(out_channels[3], num_classes)

    def forward_features(self, x: torch.Tensor) -> Features:
        x = F.relu(self.bn1(self.conv1(x)))
        stages = [x]
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer[0](x)
            for blk in layer[1:]:
                x, preact = blk(x)
            stages.append(preact)
        return pool_and_classify(self, stages, F.relu(self.bn2(self.conv2(x))))


@register_model
def shufflenetv1(num_classes: int = 100) -> ShuffleNetV1:
    """RepDistiller ``ShuffleV1``: groups 3, widths 240/480/960, blocks 4/8/4."""
    return ShuffleNetV1(num_classes, (240, 480, 960), (4, 8, 4), groups=3)


@register_model
def shufflenetv2(num_classes: int = 100) -> ShuffleNetV2:
    """RepDistiller ``ShuffleV2`` (net_size 1): widths 116/232/464, head 1024, blocks 3/7/3."""
    return ShuffleNetV2(num_classes, (116, 232, 464, 1024), (3, 7, 3))
