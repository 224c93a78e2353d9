"""``strategy=akd``: Architecture-aware Knowledge Distillation (Liu, Jia, Tan et al., "Search to Distill:
Pearls are Everywhere but not the Eyes", CVPR 2020).

The MnasNet search (Tan et al., CVPR 2019) with a KD-guided reward: an LSTM controller (one layer of 100
units, as NASNet/MnasNet) samples a student from the factorised space (``space=mbconv_akd``), the search
loop's train evaluator trains it for a few epochs on mini-train *with KD from the teacher* and reports
mini-val top-1, and the policy (PPO by default, as MnasNet; ``algo=reinforce`` for ENAS's REINFORCE)
maximises ``ACC * (LAT / T) ** w`` (MnasNet Eq. 2; soft ``w = -0.07``, hard ``alpha = 0, beta = -1``: the
``constraint:`` group, LAT from the latency look-up table, or params/FLOPs targets instead).

``reward=ce`` is the NAS baseline of the paper (NASNet-style search without the teacher): the strategy
is the same, ``conf/strategy/akd.yaml`` points ``search.objective`` at ``strategy.reward`` so that the
evaluator trains candidates with cross-entropy alone. Each result is stamped with ``reward_kind``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdnas.errors import ConfigError
from kdnas.spaces.base import Arch
from kdnas.strategies.base import register_strategy
from kdnas.strategies.controllers import PolicyStrategy

REWARDS = ("kd", "ce")


@register_strategy("akd")
class AKDStrategy(PolicyStrategy):
    def __init__(self, space: Any, *, reward: str = "kd", algo: str = "ppo", hidden: int = 100,
                 **kwargs: Any) -> None:
        if reward not in REWARDS:
            raise ConfigError(f"strategy.reward={reward!r} is not one of {', '.join(REWARDS)} (kd: AKD, ce: the NAS "
                              "baseline without a teacher).")
        super().__init__(space, algo=algo, hidden=hidden, **kwargs)
        self.reward_kind = reward

    def shape(self, arch: Arch, result: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().shape(arch, result), "reward_kind": self.reward_kind}
