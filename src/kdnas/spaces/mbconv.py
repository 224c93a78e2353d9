"""MBConv-family search spaces: one block, one network builder, two presets. ``mbconv_akd``: the MnasNet space
(Tan et al., CVPR 2019, Sec. 4.1) as AKD searches it (Liu et al., CVPR 2020); ``mbconv_cream``: Cream of the
Crop's supernet space (Peng et al., NeurIPS 2020).

Invariants: filters are multiples of 8 (:func:`make_divisible`); inputs under 128 px take the CIFAR stride plan,
224 px the original strides; ``stages`` in :class:`Features` are the last layer's output at each resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from kdnas.errors import ConfigError
from kdnas.models.features import FeatureNet, Features, pool_and_classify
from kdnas.spaces.base import Arch, Decision, SearchSpace, register_space

SMALL_INPUT = 128  # inputs below this many pixels use the CIFAR stride plan


def make_divisible(v: float, divisor: int = 8) -> int:
    """MnasNet/EfficientNet ``round_filters``: nearest multiple of ``divisor``, never 10% below ``v``."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


@dataclass(frozen=True)
class LayerSpec:
    op: str  # conv (regular kxk) | dwsep (depthwise kxk + linear 1x1) | mbconv (1x1 expand, dw kxk, linear 1x1)
    kernel: int
    expand: int
    out: int
    stride: int
    se: float = 0.0
    skip: str = "identity"  # identity | pool | none


@dataclass(frozen=True)
class Style:
    """Preset-wide details of the block and head."""

    act: type[nn.Module]
    se_gate: type[nn.Module]
    se_from_mid: bool  # SE width reduced from the expanded width (Cream/timm reduce_mid) or the input (MnasNet)
    se_divisor: int
    efficient_head: bool  # pool before the 1x1 head conv (Cream / MobileNetV3) or after (MnasNet)


def conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = None
                ) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + [act()] if act is not None else layers


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int, reduced: int, gate: type[nn.Module]) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(ch, reduced, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(reduced, ch, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))))


class MBConv(nn.Module):
    """[1x1 expand] -> kxk conv (depthwise unless op=conv) -> [SE] -> [1x1 linear projection], plus the skip."""

    def __init__(self, cin: int, spec: LayerSpec, style: Style) -> None:
        super().__init__()
        mid = cin * spec.expand
        conv_out = spec.out if spec.op == "conv" else mid
        layers = conv_bn_act(cin, mid, 1, act=style.act) if spec.expand != 1 else []
        layers += conv_bn_act(mid, conv_out, spec.kernel, spec.stride, 1 if spec.op == "conv" else mid, style.act)
        if spec.se > 0:
            base = conv_out if style.se_from_mid else cin
            layers.append(SqueezeExcite(conv_out, make_divisible(base * spec.se, style.se_divisor), style.se_gate))
        if spec.op != "conv":
            layers += conv_bn_act(mid, spec.out, 1)
        self.body = nn.Sequential(*layers)
        same_shape = spec.stride == 1 and cin == spec.out
        self.shortcut: nn.Module | None = None
        if spec.skip == "identity" and same_shape:
            self.shortcut = nn.Identity()
        elif spec.skip == "pool":
            pool = nn.AvgPool2d(3, spec.stride, 1, count_include_pad=False)
            self.shortcut = pool if cin == spec.out else nn.Sequential(pool, *conv_bn_act(cin, spec.out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out if self.shortcut is None else out + self.shortcut(x)


class MBConvNet(FeatureNet):
    """Stem, MBConv layers, head. ``stages`` in :class:`Features` are the outputs of the last layer at each
    resolution."""

    def __init__(self, stem: int, stem_stride: int, layers: list[LayerSpec], head: int, num_classes: int,
                 style: Style) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_act(3, stem, 3, stem_stride, act=style.act))
        blocks, cin = [], stem
        for spec in layers:
            blocks.append(MBConv(cin, spec, style))
            cin = spec.out
        self.blocks = nn.Sequential(*blocks)
        self.stage_ends = [i for i in range(len(layers)) if i == len(layers) - 1 or layers[i + 1].stride > 1]
        self.efficient_head = style.efficient_head
        if style.efficient_head:
            self.head = nn.Sequential(nn.Conv2d(cin, head, 1), style.act())
        else:
            self.head = nn.Sequential(*conv_bn_act(cin, head, 1, act=style.act))
        self.num_classes = num_classes
        self.stage_channels = [layers[i].out for i in self.stage_ends]
        self.classifier = nn.Linear(head, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> Features:
        x = self.stem(x)
        stages = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                stages.append(x)
        if not self.efficient_head:
            return pool_and_classify(self, stages, self.head(x))
        emb = torch.flatten(self.head(nn.functional.adaptive_avg_pool2d(x, 1)), 1)
        return Features(logits=self.classifier(emb), stages=stages, feature_map=x, embedding=emb)


class MBConvSpace(SearchSpace):
    """Shared part of the presets: subclasses give the decisions and the per-layer specs at 224 px."""

    STEM: int
    HEAD: int
    STYLE: Style

    def layers(self, d: dict) -> list[LayerSpec]:
        raise NotImplementedError

    def final_widths(self) -> set[int]:
        return {self.HEAD}  # the head conv's width, whatever the blocks

    def build(self, arch: Arch, num_classes: int, input_size: int = 32) -> FeatureNet:
        """Inputs of 224 px keep the original strides (stem stride 2, final map 7x7). Smaller inputs (CIFAR,
        < ``SMALL_INPUT`` px) use a stride-1 stem and turn the first stride-2 layer into stride 1: 32 px ends at 4x4."""
        specs = self.layers(self.validate(arch).decisions)
        small = input_size < SMALL_INPUT
        if small:
            first = next(i for i, s in enumerate(specs) if s.stride > 1)
            specs[first] = replace(specs[first], stride=1)
        return MBConvNet(self.STEM, 1 if small else 2, specs, self.HEAD, num_classes, self.STYLE)


# MnasNet-B1 blocks after the stem: (filters, layers, stride); torchvision ``mnasnet1_0`` has the same.
MNASNET_B1 = [(16, 1, 1), (24, 3, 2), (40, 3, 2), (80, 3, 2), (96, 2, 1), (192, 4, 2), (320, 1, 1)]
AKD_OPS = {"conv": ("conv", 1), "dwsep": ("dwsep", 1), "mbconv_e3": ("mbconv", 3), "mbconv_e6": ("mbconv", 6)}


@register_space("mbconv_akd")
class MnasNetSpace(MBConvSpace):
    """``mbconv_akd``: 7 blocks around MnasNet-B1 (filters 16/24/40/80/96/192/320, layers 1/3/3/3/2/4/1; stem conv
    32, head 1280, ReLU). Per block: conv op {conv, dwsep, mbconv_e3, mbconv_e6}, kernel {3, 5}, SE ratio {0, 0.25},
    skip op {pool, identity, none}, filter multiplier {0.75, 1.0, 1.25} (rounded to a multiple of 8 as in MnasNet's
    ``round_filters``, so some multipliers coincide), layers delta {-1, 0, +1} (only the deltas leaving >= 1 layer).
    Skip ops (our reading, see docs/decisions.md): ``identity`` adds x when shapes match, ``pool`` adds a 3x3
    average pool of x (stride of the layer, a 1x1 conv + BN when channels change), ``none`` adds nothing."""

    name = "mbconv_akd"
    STEM, HEAD = 32, 1280
    STYLE = Style(nn.ReLU, nn.Sigmoid, se_from_mid=False, se_divisor=1, efficient_head=False)

    def decisions(self) -> list[Decision]:
        out = []
        for b, (_, n, _) in enumerate(MNASNET_B1, 1):
            out += [Decision(f"b{b}_op", list(AKD_OPS)), Decision(f"b{b}_kernel", [3, 5]),
                    Decision(f"b{b}_se", [0.0, 0.25]), Decision(f"b{b}_skip", ["pool", "identity", "none"]),
                    Decision(f"b{b}_filters", [0.75, 1.0, 1.25]),
                    Decision(f"b{b}_layers", [k for k in (-1, 0, 1) if n + k >= 1])]
        return out

    def layers(self, d: dict) -> list[LayerSpec]:
        specs = []
        for b, (filters, n, stride) in enumerate(MNASNET_B1, 1):
            op, expand = AKD_OPS[d[f"b{b}_op"]]
            out = make_divisible(filters * d[f"b{b}_filters"])
            specs += [LayerSpec(op, d[f"b{b}_kernel"], expand, out, stride if i == 0 else 1, d[f"b{b}_se"],
                                d[f"b{b}_skip"]) for i in range(n + d[f"b{b}_layers"])]
        return specs


CREAM_STAGES = [(24, 2), (40, 2), (80, 2), (96, 1), (192, 2)]  # (channels, stride) of the searchable stages
CREAM_CHOICES = [f"k{k}_e{e}" for k in (3, 5, 7) for e in (4, 6)]


@dataclass
class CreamSpaceSettings:
    """``space=mbconv_cream`` keys."""

    layers: list[int] = field(default_factory=lambda: [4, 4, 4, 4, 4])  # layers of the 24/40/80/96/192 stages


@register_space("mbconv_cream", settings=CreamSpaceSettings)
class CreamSpace(MBConvSpace):
    """``mbconv_cream``, after the official ``lib/models/structures/supernet.py`` (https://github.com/microsoft/Cream):
    stem conv 16, a fixed depthwise-separable 16 block, searchable stages of 24/40/80/96/192 channels whose every
    layer picks one of 6 inverted-residual choices, kernel {3, 5, 7} x expansion {4, 6}, all with SE 0.25 (ReLU,
    hard-sigmoid gate, reduced from the expanded width, divisor 8) and Swish; then a 1x1 conv to 320 and the
    efficient head (pool, 1x1 conv 1280, Swish). No skip op. Layers per stage (``space.layers``) are fixed per space
    (the default's origin: docs/decisions.md, Cream)."""

    name = "mbconv_cream"
    STEM, HEAD = 16, 1280
    STYLE = Style(nn.SiLU, nn.Hardsigmoid, se_from_mid=True, se_divisor=8, efficient_head=True)

    def __init__(self, layers: Sequence[int] = (4, 4, 4, 4, 4)) -> None:
        super().__init__()
        layers = list(layers)
        if len(layers) != len(CREAM_STAGES) or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ConfigError(f"space.layers must list {len(CREAM_STAGES)} positive layer counts (one per stage "
                              f"{[c for c, _ in CREAM_STAGES]}), got {layers}.")
        self.fixed = {"layers": layers}

    def decisions(self) -> list[Decision]:
        return [Decision(f"s{s}_l{i}", CREAM_CHOICES)
                for s, n in enumerate(self.fixed["layers"], 1) for i in range(1, n + 1)]

    def layers(self, d: dict) -> list[LayerSpec]:
        specs = [LayerSpec("dwsep", 3, 1, 16, 1, 0.25)]
        for s, ((ch, stride), n) in enumerate(zip(CREAM_STAGES, d["layers"]), 1):
            for i in range(1, n + 1):
                k, e = (int(v[1:]) for v in d[f"s{s}_l{i}"].split("_"))
                specs.append(LayerSpec("mbconv", k, e, ch, stride if i == 1 else 1, 0.25))
        return specs + [LayerSpec("conv", 1, 1, 320, 1, skip="none")]
