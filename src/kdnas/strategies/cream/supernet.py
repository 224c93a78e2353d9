"""Cream's one-shot supernet: every searchable layer of an MBConv space holds all its candidate blocks (the space's
own, built through ``space.build``); a path is an :class:`Arch` of the space and runs one block per layer.

Invariant: :meth:`Supernet.extract` returns exactly the network ``space.build(path)`` gives, with the supernet's
weights. Shared BN running statistics belong to no path, so a path is evaluated on an extracted copy recalibrated
first (:func:`recalibrate_bn`, as SPOS does).

Reference: Peng et al., NeurIPS 2020, "Cream of the Crop"; official microsoft/Cream
``lib/models/structures/supernet.py``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdnas.errors import ConfigError
from kdnas.models.features import FeatureNet, Features
from kdnas.spaces.base import Arch
from kdnas.spaces.mbconv import MBConvSpace


class HardSigmoid(nn.Module):
    """``relu6(x + 3) / 6``, the official Cream ``hard_sigmoid``: equal to ``nn.Hardsigmoid``, which has no double
    backward (``hardsigmoid_backward``), and the look-ahead hypergradient differentiates through the gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3) / 6


def twice_differentiable(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Hardsigmoid`` inside ``module`` by :class:`HardSigmoid` (no weights change)."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Hardsigmoid):
                setattr(parent, name, HardSigmoid())
    return module


class ChoiceBlock(nn.Module):
    """One searchable layer: its candidate blocks, of which ``active`` runs."""

    def __init__(self, candidates: dict[str, nn.Module]) -> None:
        super().__init__()
        self.candidates = nn.ModuleDict(candidates)
        self.active = next(iter(candidates))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.candidates[self.active](x)


class Supernet(nn.Module):
    """All paths of ``space`` with shared weights; ``forward(x, path)`` runs one of them."""

    def __init__(self, space: MBConvSpace, num_classes: int, input_size: int = 32) -> None:
        super().__init__()
        if not isinstance(space, MBConvSpace):
            raise ConfigError(f"strategy=cream needs an MBConv space (e.g. space=mbconv_cream), not {space.name!r}.")
        self.space, self.num_classes, self.input_size = space, num_classes, input_size
        self.decisions = space.decisions()
        self.choices = list(self.decisions[0].options)
        if any(d.options != self.choices for d in self.decisions):
            raise ConfigError(f"Space {space.name!r} gives its layers different options; the supernet needs one "
                              "candidate list shared by every searchable layer.")
        nets = {c: space.build(self.single_choice(c), num_classes, input_size) for c in self.choices}
        self.layer_of = {d.name: self._locate(d.name) for d in self.decisions}
        self.net = nets[self.choices[0]]
        for i in self.layer_of.values():
            self.net.blocks[i] = ChoiceBlock({c: nets[c].blocks[i] for c in self.choices})
        twice_differentiable(self.net)

    def single_choice(self, choice: str) -> Arch:
        """The path that picks ``choice`` in every layer."""
        return self.space.make({d.name: choice for d in self.decisions})

    def _locate(self, name: str) -> int:
        """The block index decision ``name`` controls: the one layer spec that changes with it."""
        base = self.single_choice(self.choices[0]).decisions
        other = {**base, name: self.choices[1]}
        changed = [i for i, (a, b) in enumerate(zip(self.space.layers(base), self.space.layers(other))) if a != b]
        if len(changed) != 1:
            raise ConfigError(f"Decision {name!r} of space {self.space.name!r} changes {len(changed)} layers; the "
                              "supernet needs one layer per decision.")
        return changed[0]

    # -- paths ---------------------------------------------------------------------------------------
    def set_path(self, path: Arch) -> None:
        self.space.validate(path)
        for name, i in self.layer_of.items():
            self.net.blocks[i].active = path.decisions[name]

    def forward_features(self, x: torch.Tensor, path: Arch) -> Features:
        self.set_path(path)
        return self.net.forward_features(x)

    def forward(self, x: torch.Tensor, path: Arch) -> torch.Tensor:
        return self.forward_features(x, path).logits

    def path_parameters(self, path: Arch) -> dict[str, nn.Parameter]:
        """The parameters ``path`` uses, by their names in the supernet (for ``functional_call``)."""
        unused = tuple(f"net.blocks.{i}.candidates.{c}." for name, i in self.layer_of.items()
                       for c in self.choices if c != path.decisions[name])
        return {n: p for n, p in self.named_parameters() if not n.startswith(unused)}

    def path_state_dict(self, path: Arch) -> dict[str, torch.Tensor]:
        """``path``'s weights and buffers under the key names of ``space.build(path)``."""
        self.set_path(path)
        searchable = set(self.layer_of.values())
        out = {}
        for key, value in self.net.state_dict().items():
            parts = key.split(".")
            if parts[0] == "blocks" and int(parts[1]) in searchable:
                if parts[3] != self.net.blocks[int(parts[1])].active:
                    continue
                key = ".".join(parts[:2] + parts[4:])
            out[key] = value
        return out

    def extract(self, path: Arch) -> FeatureNet:
        """A stand-alone copy of ``path`` with inherited weights (on the supernet's device)."""
        with torch.random.fork_rng(devices=[]):  # the build's init draws must not move the global stream
            net = self.space.build(path, self.num_classes, self.input_size)
        net.load_state_dict(self.path_state_dict(path))
        return net.to(next(self.parameters()).device)


class MacsTable:
    """MACs of any path as a sum of per-layer terms, like the official ``FlopsEst``: every layer's input and
    output shapes are the same under every choice, so ``macs(path) = fixed + sum_l macs(layer l, choice)``.

    Counted once by ``FlopCounterMode`` (the counter of :mod:`kdnas.spaces.costs`: convolutions and matrix
    products) over one eval-mode forward pass of each single-choice path."""

    def __init__(self, supernet: Supernet) -> None:
        x = torch.zeros(1, 3, supernet.input_size, supernet.input_size, device=next(supernet.parameters()).device)
        was_training = supernet.training
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            for c in supernet.choices:
                supernet.eval()(x, supernet.single_choice(c))
        supernet.train(was_training)
        counts = {name.split(".", 1)[-1]: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
        self.layer = {(name, c): counts[f"net.blocks.{i}.candidates.{c}"] // 2
                      for name, i in supernet.layer_of.items() for c in supernet.choices}
        self.fixed = (counter.get_total_flops() // 2 - sum(self.layer.values())) // len(supernet.choices)
        self.names = list(supernet.layer_of)

    def __call__(self, path: Arch) -> int:
        return int(self.fixed + sum(self.layer[(name, path.decisions[name])] for name in self.names))


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Reset every BN's running statistics and re-estimate them as the plain average over ``batches`` (train
    mode, ``momentum=None``); returns ``net`` in eval mode."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    for x in batches:
        net(x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    return net.eval()
