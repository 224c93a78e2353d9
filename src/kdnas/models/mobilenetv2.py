"""MobileNetV2 for CIFAR as in RepDistiller: ``mobilenetv2`` is their ``mobile_half`` (width 0.5, expansion T=6),
``mobilenetv2_w1`` width 1.0; module names match theirs (differences from torchvision: docs/decisions.md, "Models").

``stages`` = [stem, after block groups 1, 2, 4, 6] (RepDistiller's f0-f4), ``feature_map`` = the 1x1 head conv
(1280 channels).

Reference: Sandler et al. 2018; https://github.com/HobbitLong/RepDistiller ``models/mobilenetv2.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from kdnas.models.features import FeatureNet, Features, pool_and_classify
from kdnas.models.registry import register_model

# t (expansion), c (channels), n (blocks), s (stride of the first block); t=None means "use T".
SETTINGS: list[tuple[int | None, int, int, int]] = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]
STAGE_ENDS = (1, 2, 4, 6)  # indices into ``blocks`` whose outputs are stage features


def _conv_bn_relu(inp: int, oup: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (x ``expand_ratio``), kxk depthwise, 1x1 linear projection; residual if shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, kernel_size: int = 3) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size, stride, kernel_size // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(FeatureNet):
    def __init__(self, num_classes: int, T: int = 6, width_mult: float = 1.0) -> None:
        super().__init__()
        in_ch = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_ch, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in SETTINGS:
            out_ch = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t or T))
                in_ch = out_ch
            self.blocks.append(nn.Sequential(*layers))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_ch, last, 1, 1)
        self.num_classes = num_classes
        self.stage_channels = [int(32 * width_mult)] + [int(SETTINGS[i][1] * width_mult) for i in STAGE_ENDS]
        self.classifier = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> Features:
        x = self.conv1(x)
        stages = [x]
        for i, group in enumerate(self.blocks):
            x = group(x)
            if i in STAGE_ENDS:
                stages.append(x)
        return pool_and_classify(self, stages, self.conv2(x))


@register_model
def mobilenetv2(num_classes: int = 100) -> MobileNetV2:
    return MobileNetV2(num_classes, T=6, width_mult=0.5)


@register_model
def mobilenetv2_w1(num_classes: int = 100) -> MobileNetV2:
    return MobileNetV2(num_classes, T=6, width_mult=1.0)
