"""ResNet search spaces for CIFAR: ``resnet_cifar``, DisWOT's search space 1 (Dong et al., "DisWOT", CVPR 2023),
and ``resnet_cifar_large``, a Zen-NAS-style space (Lin et al., "Zen-NAS", ICCV 2021).

Invariants: both build CIFAR networks (stride-1 stem, 2 stride-2 stages), so ``input_size`` only changes the map
sizes; ``resnet_cifar``'s (3, 3, 3) is exactly the zoo's ``resnet20``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from kdnas.errors import ConfigError
from kdnas.models.features import FeatureNet
from kdnas.models.resnet_cifar import BLOCKS, CifarResNet, build_cifar_resnet
from kdnas.spaces.base import Arch, Decision, SearchSpace, register_space


def _positive_ints(key: str, values: Sequence[int]) -> list[int]:
    values = list(values)
    if not values or any(not isinstance(v, int) or v < 1 for v in values):
        raise ConfigError(f"space.{key} must be a non-empty list of positive integers, got {values}.")
    return values


@dataclass
class ResNetCifarSettings:
    """``space=resnet_cifar`` keys."""

    depths: list[int] = field(default_factory=lambda: [1, 3, 5, 7])  # options for every stage
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])  # one stage per width (stored in each arch)


@register_space("resnet_cifar", settings=ResNetCifarSettings)
class ResNetCifarSpace(SearchSpace):
    """DisWOT's space 1 (https://github.com/lilujunai/DisWOT-CVPR2023): ResNet-20-like, 3 stages of basic blocks
    with widths 16/32/64, the depth of each stage in {1, 3, 5, 7}: 4^3 = 64 archs. Built with
    :func:`kdnas.models.resnet_cifar.build_cifar_resnet`."""

    name = "resnet_cifar"

    def __init__(self, depths: Sequence[int] = (1, 3, 5, 7), widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        self.depth_options = _positive_ints("depths", depths)
        self.fixed = {"widths": _positive_ints("widths", widths)}

    def decisions(self) -> list[Decision]:
        return [Decision(f"depth{i + 1}", self.depth_options) for i in range(len(self.fixed["widths"]))]

    def final_widths(self) -> set[int]:
        return {self.fixed["widths"][-1] * BLOCKS["basic"].expansion}

    def build(self, arch: Arch, num_classes: int, input_size: int = 32) -> FeatureNet:
        d = self.validate(arch).decisions
        widths = d["widths"]
        return build_cifar_resnet([d[f"depth{i + 1}"] for i in range(len(widths))], widths, num_classes)


class MixedResNet(CifarResNet):
    """A :class:`CifarResNet` whose stages each have their own (block, kernel, planes, depth).

    It inherits ``forward_features`` (and so the stage layout ``conv1``/``bn1``/``layer{i}``) and only
    replaces the constructor, whose parent version takes one block type and kernel for all stages.
    """

    def __init__(self, stages: list[tuple[str, int, int, int]], num_classes: int, stem_width: int = 16) -> None:
        FeatureNet.__init__(self)
        self.num_classes = num_classes
        self.num_stages = len(stages)
        self.conv1 = nn.Conv2d(3, stem_width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        in_ch, self.stage_channels = stem_width, [stem_width]
        for i, (block, kernel, planes, depth) in enumerate(stages):
            cls = BLOCKS[block]
            layers = []
            for j in range(depth):
                layers.append(cls(in_ch, planes, 2 if i > 0 and j == 0 else 1, kernel))
                in_ch = planes * cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            self.stage_channels.append(in_ch)
        self.classifier = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


@dataclass
class ResNetCifarLargeSettings:
    """``space=resnet_cifar_large`` keys."""

    base_widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    stem_width: int = 16


@register_space("resnet_cifar_large", settings=ResNetCifarLargeSettings)
class ResNetCifarLargeSpace(SearchSpace):
    """After Zen-NAS (https://github.com/idstcv/ZenNAS): each of the 3 stages picks its block type {basic,
    bottleneck}, kernel {3, 5, 7}, width multiplier {0.5, 0.75, 1.0, 1.5, 2.0} of the base planes 16/32/64
    (bottleneck stages output 4x the planes, as in He et al.'s CIFAR ResNet-164) and depth {1, ..., 7}:
    210^3 = 9,261,000 archs."""

    name = "resnet_cifar_large"
    BLOCK_TYPES = ["basic", "bottleneck"]
    KERNELS = [3, 5, 7]
    WIDTH_MULTS = [0.5, 0.75, 1.0, 1.5, 2.0]
    DEPTHS = [1, 2, 3, 4, 5, 6, 7]

    def __init__(self, base_widths: Sequence[int] = (16, 32, 64), stem_width: int = 16) -> None:
        super().__init__()
        self.fixed = {"base_widths": _positive_ints("base_widths", base_widths),
                      "stem_width": _positive_ints("stem_width", [stem_width])[0]}

    def decisions(self) -> list[Decision]:
        out = []
        for i in range(1, len(self.fixed["base_widths"]) + 1):
            out += [Decision(f"block{i}", self.BLOCK_TYPES), Decision(f"kernel{i}", self.KERNELS),
                    Decision(f"width{i}", self.WIDTH_MULTS), Decision(f"depth{i}", self.DEPTHS)]
        return out

    def final_widths(self) -> set[int]:
        base = self.fixed["base_widths"][-1]
        return {max(1, round(base * m)) * BLOCKS[b].expansion for m in self.WIDTH_MULTS for b in self.BLOCK_TYPES}

    def build(self, arch: Arch, num_classes: int, input_size: int = 32) -> FeatureNet:
        d = self.validate(arch).decisions
        stages = [(d[f"block{i}"], d[f"kernel{i}"], max(1, round(base * d[f"width{i}"])), d[f"depth{i}"])
                  for i, base in enumerate(d["base_widths"], 1)]
        return MixedResNet(stages, num_classes, d["stem_width"])
