"""The teacher a distillation run reads: one frozen network, or an ensemble combined by the mean of its members'
logits (``teacher.combine=oracle``: KDAS's oracle loss reads every member's logits). A teacher never leaves eval
mode and never has gradients.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from kdnas.config import TeacherConfig
from kdnas.distill.cache import tensor_bytes
from kdnas.errors import ConfigError
from kdnas.models import Features


def freeze(net: nn.Module) -> nn.Module:
    """Teachers run in eval mode without gradients."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


COMBINE = ("mean", "oracle")
CACHE_MODES = ("auto", "off", "required")


def weights_sha256(net: nn.Module) -> str:
    """sha256 over every parameter and buffer (names, dtypes, shapes, bytes): the identity of a teacher's
    outputs, whatever file or store entry it was loaded from."""
    h = hashlib.sha256(type(net).__name__.encode())
    for name, t in sorted(net.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{list(t.shape)};".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


class Teacher(nn.Module):
    """Frozen member network(s) in eval mode; ``forward`` gives the mean logits (what evaluation reads)."""

    def __init__(self, members: list[nn.Module], names: list[str], combine: str = "mean", cache: str = "off"):
        super().__init__()
        if combine not in COMBINE:
            raise ConfigError(f"teacher.combine={combine!r} is not one of {', '.join(COMBINE)}.")
        if cache not in CACHE_MODES:
            raise ConfigError(f"teacher.cache={cache!r} is not one of {', '.join(CACHE_MODES)}.")
        self.members = nn.ModuleList([freeze(m) for m in members])
        self.names, self.combine, self.cache = names, combine, cache
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # a teacher never leaves eval mode

    @cached_property
    def hashes(self) -> list[str]:
        return [weights_sha256(m) for m in self.members]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def member_logits(self, x: Tensor) -> Tensor:
        """[M, B, K] under no_grad."""
        with torch.no_grad():
            return torch.stack([m(x) for m in self.members])

    def forward_features(self, x: Tensor) -> Features:
        if len(self.members) != 1:
            raise ConfigError("Feature distillation needs a single teacher network, not an ensemble.")
        with torch.no_grad():
            return self.members[0].forward_features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.member_logits(x).mean(0)


def member_configs(tcfg: TeacherConfig | Any) -> list[TeacherConfig]:
    """``teacher.members`` as full teacher configs: store entries inherit ``teacher.trainer`` (the teacher
    recipe) and ``train_if_missing``; an entry with ``checkpoint`` loads weights."""
    if not tcfg.members:
        raise ConfigError("teacher=ensemble needs teacher.members: a list like [{model: resnet20, seed: 0}, "
                          "{checkpoint: PATH, model: resnet56}].")
    base = {"trainer": tcfg.trainer, "train_if_missing": tcfg.train_if_missing}
    out = []
    for i, member in enumerate(tcfg.members):
        try:
            cfg = OmegaConf.merge(OmegaConf.structured(TeacherConfig), base, member)
        except OmegaConfBaseException as e:
            raise ConfigError(f"teacher.members[{i}]={member}: {str(e).splitlines()[0]}. Each member is a teacher "
                              "config (model, seed, checkpoint).") from None
        cfg.kind = "checkpoint" if cfg.checkpoint else "store"
        out.append(OmegaConf.to_object(cfg))
    return out
