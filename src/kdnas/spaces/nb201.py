"""NAS-Bench-201 cell space (Dong & Yang, "NAS-Bench-201", ICLR 2020, https://github.com/D-X-Y/NAS-Bench-201;
modules as in ``xautodl/models/cell_infers``).

Invariants: the network is the benchmark's (defaults C=16, N=5) and an arch converts to and from its string. The
benchmark's tabular results are not available offline: candidates are scored by kdnas's proxies or trainings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdnas.errors import ConfigError
from kdnas.models.features import FeatureNet, Features, pool_and_classify
from kdnas.spaces.base import Arch, Decision, SearchSpace, register_space

OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
EDGES = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]  # (from, to) in the benchmark's string order


def relu_conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def make_op(name: str, c: int) -> nn.Module:
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    return relu_conv_bn(c, c, 1 if name == "nor_conv_1x1" else 3)


class Cell(nn.Module):
    """A DAG of 4 nodes; each of its 6 edges i->j (i < j) applies one of {none, skip_connect, nor_conv_1x1,
    nor_conv_3x3, avg_pool_3x3} and node j sums its incoming edges: 5^6 = 15,625 cells."""

    def __init__(self, ops: list[str], c: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(make_op(op, c) for op in ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for j in range(1, 4):
            nodes.append(sum(op(nodes[i]) for op, (i, to) in zip(self.edges, EDGES) if to == j))
        return nodes[-1]


class ReductionBlock(nn.Module):
    """NB201's ``ResNetBasicblock`` with stride 2: two ReLU-conv-BN 3x3 plus avg-pool + 1x1 conv shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_a = relu_conv_bn(cin, cout, 3, 2)
        self.conv_b = relu_conv_bn(cout, cout, 3)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201Net(FeatureNet):
    """The benchmark's ``TinyNetwork``: 3x3 conv stem with C channels + BN, three stages of N cells at C, 2C, 4C
    channels with a residual reduction block (stride 2) between them, BN-ReLU, global pool, linear."""

    def __init__(self, ops: list[str], c: int, n: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        layers: list[nn.Module] = []
        for s in range(3):
            width = c * 2**s
            layers += ([ReductionBlock(width // 2, width)] if s else []) + [Cell(ops, width) for _ in range(n)]
        self.layers = nn.Sequential(*layers)
        self.stage_ends = [n - 1, 2 * n, 3 * n + 1]  # the last cell of each stage
        self.lastact = nn.Sequential(nn.BatchNorm2d(4 * c), nn.ReLU())
        self.num_classes = num_classes
        self.stage_channels = [c, 2 * c, 4 * c]
        self.classifier = nn.Linear(4 * c, num_classes)

    def forward_features(self, x: torch.Tensor) -> Features:
        x = self.stem(x)
        stages = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.stage_ends:
                stages.append(x)
        return pool_and_classify(self, stages, self.lastact(x))


@dataclass
class NB201Settings:
    """``space=nb201`` keys (the benchmark's names)."""

    C: int = 16  # noqa: N815 - channels of the first stage
    N: int = 5  # noqa: N815 - cells per stage


@register_space("nb201", settings=NB201Settings)
class NB201Space(SearchSpace):
    name = "nb201"

    def __init__(self, C: int = 16, N: int = 5) -> None:  # noqa: N803 - the benchmark's names
        super().__init__()
        if not (isinstance(C, int) and isinstance(N, int) and C >= 1 and N >= 1):
            raise ConfigError(f"space.C and space.N must be positive integers (benchmark: C=16, N=5), got {C}, {N}.")
        self.fixed = {"C": C, "N": N}

    def decisions(self) -> list[Decision]:
        return [Decision(f"e{i}_{j}", OPS) for i, j in EDGES]

    def final_widths(self) -> set[int]:
        return {4 * self.fixed["C"]}

    def build(self, arch: Arch, num_classes: int, input_size: int = 32) -> FeatureNet:
        d = self.validate(arch).decisions
        return NB201Net([d[f"e{i}_{j}"] for i, j in EDGES], d["C"], d["N"], num_classes)

    def arch_str(self, arch: Arch) -> str:
        """The benchmark's string, e.g. ``|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|...|``."""
        d = self.validate(arch).decisions
        nodes = ["|" + "|".join(f"{d[f'e{i}_{j}']}~{i}" for i in range(j)) + "|" for j in range(1, 4)]
        return "+".join(nodes)

    def from_arch_str(self, text: str) -> Arch:
        """Parse the benchmark's string; anything else raises a ConfigError quoting the expected form."""
        choices = {}
        try:
            for j, node in enumerate(text.strip().split("+"), 1):
                items = node.strip("|").split("|")
                if j > 3 or len(items) != j:
                    raise ValueError
                for item in items:
                    op, i = item.split("~")
                    choices[f"e{int(i)}_{j}"] = op
        except ValueError:
            choices = {}
        if set(choices) != {f"e{i}_{j}" for i, j in EDGES}:
            raise ConfigError(f"{text!r} is not a NAS-Bench-201 arch string; expected 3 '+'-separated nodes with 1, 2 "
                              "and 3 'op~input' entries, e.g. |nor_conv_3x3~0|+|none~0|skip_connect~1|+|"
                              "avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|")
        return self.make(choices)
