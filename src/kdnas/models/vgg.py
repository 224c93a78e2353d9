"""CIFAR VGGs with BatchNorm and a single linear classifier, as in RepDistiller ``models/vgg.py``.

Source: https://github.com/HobbitLong/RepDistiller (after Wei Yang's port): its ``vgg8``/``vgg11``/``vgg13``
entries are the ``_bn`` variants, cfg 'S', 'A' and 'B'. Module names match, so checkpoints load as is.

Five conv blocks; the last ReLU of each block is applied outside it, so ``stages`` are RepDistiller's
``preact=True`` features: block0 after ReLU (it has no preact variant), blocks 1-4 before their ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdnas.models.features import FeatureNet, Features, pool_and_classify
from kdnas.models.registry import register_model

CFGS: dict[str, list[list[int]]] = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


def _block(channels: list[int], in_ch: int) -> nn.Sequential:
    """conv-BN-ReLU repeated, without the final ReLU."""
    layers: list[nn.Module] = []
    for v in channels:
        layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
        in_ch = v
    return nn.Sequential(*layers[:-1])


class VGG(FeatureNet):
    def __init__(self, cfg: list[list[int]], num_classes: int) -> None:
        super().__init__()
        in_chs = [3] + [c[-1] for c in cfg[:-1]]
        for i, (channels, in_ch) in enumerate(zip(cfg, in_chs)):
            self.add_module(f"block{i}", _block(channels, in_ch))
        self.num_classes = num_classes
        self.stage_channels = [c[-1] for c in cfg]
        self.classifier = nn.Linear(cfg[-1][-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> Features:
        # RepDistiller max-pools after blocks 0-2, and after block 3 only for 64x64 (TinyImageNet) inputs.
        n_pool = 4 if x.shape[2] == 64 else 3
        x = F.relu(self.block0(x))
        stages = [x]
        for i in range(1, 5):
            if i <= n_pool:
                x = F.max_pool2d(x, 2, 2)
            pre = getattr(self, f"block{i}")(x)
            stages.append(pre)
            x = F.relu(pre)
        return pool_and_classify(self, stages, x)


@register_model
def vgg8(num_classes: int = 100) -> VGG:
    return VGG(CFGS["S"], num_classes)


@register_model
def vgg11(num_classes: int = 100) -> VGG:
    return VGG(CFGS["A"], num_classes)


@register_model
def vgg13(num_classes: int = 100) -> VGG:
    return VGG(CFGS["B"], num_classes)
