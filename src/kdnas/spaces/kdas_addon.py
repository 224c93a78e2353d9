"""KDAS add-on space: grow a base student by one searched layer after each of its stages (Kang, Mun & Han,
"Towards Oracle Knowledge Distillation with Neural Architecture Search", AAAI 2020; ENAS-macro-style decisions).

Invariants: every arch stores its base (a zoo name or an arch JSON, possibly of this space: the previous
round's student), so an arch file rebuilds alone; added layers keep their stage's width, so ``stage_channels``
are the base's. Our reading of the layer (the paper gives no code): docs/decisions.md, KDAS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdnas.errors import ConfigError
from kdnas.models import create_model, list_models
from kdnas.models.features import FeatureNet, Features, pool_and_classify
from kdnas.models.resnet_cifar import CifarResNet
from kdnas.spaces.base import Arch, Decision, SearchSpace, load_arch, register_space, space_for

OPS = ["skip", "conv3x3", "conv5x5", "sepconv3x3", "sepconv5x5", "maxpool3x3", "avgpool3x3"]


class _Blocks(nn.Sequential):
    """A CIFAR ResNet stage as a tensor -> tensor module (its blocks return ``(out, preact)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            x, _ = block(x)
        return x


def stage_modules(net: nn.Module) -> tuple[nn.Module, list[nn.Module], list[int]]:
    """(stem, stages, stage strides) of a CIFAR ResNet (``conv1``, ``bn1``, ``layer1..layerN``), sharing its
    modules. Its classifier is left out: the wrapping network has its own."""
    if not isinstance(net, CifarResNet):
        raise ConfigError(f"space.base must be a CIFAR ResNet (resnet8 ... resnet110, resnet8x4, resnet32x4, or an "
                          f"arch of resnet_cifar / resnet_cifar_large / kdas_addon); got a {type(net).__name__}.")
    stem = nn.Sequential(net.conv1, net.bn1, nn.ReLU())
    stages: list[nn.Module] = [_Blocks(*getattr(net, f"layer{i}")) for i in range(1, net.num_stages + 1)]
    return stem, stages, [1] + [2] * (net.num_stages - 1)  # CifarResNet: stride 2 at each later stage


def make_op(name: str, ch: int) -> nn.Module:
    if name == "skip":
        return nn.Identity()
    if name.endswith("pool3x3"):
        return nn.MaxPool2d(3, 1, 1) if name == "maxpool3x3" else nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    k = int(name[-1])
    if name.startswith("sepconv"):
        convs = [nn.Conv2d(ch, ch, k, padding=k // 2, groups=ch, bias=False), nn.Conv2d(ch, ch, 1, bias=False)]
    else:
        convs = [nn.Conv2d(ch, ch, k, padding=k // 2, bias=False)]
    return nn.Sequential(*convs, nn.BatchNorm2d(ch), nn.ReLU())


def projection(cin: int, cout: int, factor: int) -> nn.Module:
    """Bring an earlier added output to a later stage: average pool by ``factor``, 1x1 conv + BN if needed."""
    layers: list[nn.Module] = [nn.AvgPool2d(factor, factor)] if factor > 1 else []
    if cin != cout:
        layers += [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers) if layers else nn.Identity()


class KdasNet(FeatureNet):
    """The base's stem and stages with each round's added layers after every stage. Added layer i outputs
    ``op(x_i) + sum_j P_ji(y_j)``: x_i is the stage's output, ``skip`` the identity, convolutions conv-BN-ReLU
    (separable: depthwise kxk, 1x1, BN, ReLU), pools 3x3 stride 1, and :func:`projection` P_ji brings an earlier
    added output y_j to stage i. ``stages`` = [stem output, output of each stage after its added layer(s)]
    (post-activation, unlike the zoo ResNets' pre-activation features)."""

    def __init__(self, base: nn.Module, rounds: list[Mapping[str, Any]], num_classes: int) -> None:
        super().__init__()
        self.stem, stages, strides = stage_modules(base)
        self.stages = nn.ModuleList(stages)
        chans = base.stage_channels[1:]
        scale = [math.prod(strides[: i + 1]) for i in range(len(strides))]  # downsampling factor so far
        self.added = nn.ModuleList(nn.ModuleList(make_op(d[f"op{i + 1}"], c) for i, c in enumerate(chans))
                                   for d in rounds)
        self.sources = [[[j for j in range(i) if d[f"skip{j + 1}_{i + 1}"]] for i in range(len(chans))]
                        for d in rounds]
        self.skips = nn.ModuleDict({
            f"r{r}_{j}_{i}": projection(chans[j], chans[i], scale[i] // scale[j])
            for r, per_stage in enumerate(self.sources) for i, js in enumerate(per_stage) for j in js})
        self.num_classes = num_classes
        self.stage_channels = list(base.stage_channels)
        self.classifier = nn.Linear(chans[-1], num_classes)

    def forward_features(self, x: torch.Tensor) -> Features:
        x = self.stem(x)
        stages, outs = [x], [[] for _ in self.added]
        for i, stage in enumerate(self.stages):
            x = stage(x)
            for r, layers in enumerate(self.added):
                x = layers[i](x)
                for j in self.sources[r][i]:
                    x = x + self.skips[f"r{r}_{j}_{i}"](outs[r][j])
                outs[r].append(x)
            stages.append(x)
        return pool_and_classify(self, stages, x)


def _normalise_base(base: str | Mapping[str, Any]) -> str | dict[str, Any]:
    if isinstance(base, str):
        if base not in list_models():
            raise ConfigError(f"space.base={base!r} is not a zoo model; use a CIFAR ResNet name such as resnet20, or "
                              "an arch JSON (dict) of resnet_cifar or of kdas_addon's previous round.")
        return base
    arch = load_arch(dict(base))
    return {"space": arch.space, "version": arch.version, "decisions": arch.decisions}


def _unroll(base: str | dict[str, Any]) -> tuple[str | dict[str, Any], list[dict[str, Any]]]:
    """(root base, decisions of every earlier kdas round, oldest first)."""
    if isinstance(base, dict) and base["space"] == KdasSpace.name:
        root, rounds = _unroll(base["decisions"]["base"])
        return root, [*rounds, base["decisions"]]
    return base, []


def _build_root(root: str | dict[str, Any], num_classes: int, input_size: int) -> nn.Module:
    if isinstance(root, str):
        return create_model(root, num_classes=num_classes)
    arch = Arch.from_json(root)
    return space_for(arch).build(arch, num_classes, input_size)


@dataclass
class KDASAddonSettings:
    """``space=kdas_addon`` keys."""

    base: Any = "resnet20"  # a CIFAR ResNet zoo name, or an arch JSON dict (resnet_cifar, or an earlier round)


@register_space("kdas_addon", settings=KDASAddonSettings)
class KdasSpace(SearchSpace):
    """For a base with S stages: ``op{i}`` (i = 1..S) in {skip, conv3x3, conv5x5, sepconv3x3, sepconv5x5,
    maxpool3x3, avgpool3x3} and a binary ``skip{j}_{i}`` for every earlier added layer j < i. ``space.base`` is a
    CIFAR ResNet zoo name (default ``resnet20``), an arch JSON of another space that builds one (e.g.
    ``resnet_cifar``), or an arch JSON of this space: every round adds one layer per stage, with skips among that
    round's layers."""

    name = "kdas_addon"

    def __init__(self, base: str | Mapping[str, Any] = "resnet20") -> None:
        super().__init__()
        self.fixed = {"base": _normalise_base(base)}
        root, _ = _unroll(self.fixed["base"])
        root_net = _build_root(root, 10, 32)
        self.num_stages = len(stage_modules(root_net)[1])
        self.width = root_net.stage_channels[-1]  # added layers keep their stage's width (KdasNet's classifier)

    def decisions(self) -> list[Decision]:
        n = self.num_stages
        return [Decision(f"op{i}", OPS) for i in range(1, n + 1)] + [
            Decision(f"skip{j}_{i}", [0, 1]) for i in range(2, n + 1) for j in range(1, i)]

    def final_widths(self) -> set[int]:
        return {self.width}

    def build(self, arch: Arch, num_classes: int, input_size: int = 32) -> FeatureNet:
        d = self.validate(arch).decisions
        root, rounds = _unroll(d["base"])
        return KdasNet(_build_root(root, num_classes, input_size), [*rounds, d], num_classes)
