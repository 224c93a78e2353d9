"""``strategy=akd``: Architecture-aware Knowledge Distillation, the MnasNet search with a KD-guided reward: an LSTM
controller samples students of ``space=mbconv_akd``, the loop's train evaluator (this strategy's default) trains each
briefly with KD from the teacher, and the policy maximises its mini-val top-1 shaped by the constraint.

Invariant: ``strategy.reward`` (kd | ce) is the one key that says how candidates are trained; ``evaluator.objective``
follows it, and a contradiction is a ConfigError. The history's ``reward_kind`` is what the evaluator measured.

Reference: Liu, Jia, Tan et al., "Search to Distill: Pearls are Everywhere but not the Eyes", CVPR 2020; MnasNet,
Tan et al., CVPR 2019.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdnas.errors import ConfigError
from kdnas.strategies.base import register_strategy
from kdnas.strategies.controllers import PolicySettings, PolicyStrategy

REWARDS = ("kd", "ce")


@dataclass
class AKDSettings(PolicySettings):
    """``strategy=akd`` keys."""

    reward: str = "kd"  # kd | ce
    algo: str = "ppo"
    hidden: int = 100


@register_strategy("akd", settings=AKDSettings)
class AKDStrategy(PolicyStrategy):
    """An LSTM controller (one layer of 100 units, as NASNet/MnasNet) samples a student of the factorised space; the
    train evaluator (``evaluator=train``, this strategy's default) trains it for a few epochs on mini-train with
    KD from the teacher and reports mini-val top-1; the policy (PPO by default, as MnasNet; ``algo=reinforce`` for
    ENAS's REINFORCE) maximises ``ACC * (LAT / T) ** w`` (MnasNet Eq. 2; soft ``w = -0.07``, hard ``alpha = 0,
    beta = -1``: the ``constraint:`` group, LAT from the latency look-up table, or params/FLOPs targets instead).

    ``reward``: ``kd`` (AKD) or ``ce``, the paper's NAS baseline (NASNet-style search without the teacher).
    ``evaluator.objective`` follows it (``conf/evaluator/train.yaml`` reads ``strategy.reward``); setting both to
    different values is a ConfigError (:meth:`check_reward_kind`), as is ``reward=ce`` with a proxy evaluator. The
    history's ``reward_kind`` is written by the search loop, not taken from this key."""

    def __init__(self, space: Any, *, reward: str = "kd", algo: str = "ppo", hidden: int = 100,
                 **kwargs: Any) -> None:
        if reward not in REWARDS:
            raise ConfigError(f"strategy.reward={reward!r} is not one of {', '.join(REWARDS)} (kd: AKD, ce: the NAS "
                              "baseline without a teacher).")
        super().__init__(space, algo=algo, hidden=hidden, **kwargs)
        self.objective = reward

    def check_reward_kind(self, kind: str) -> None:
        if kind in REWARDS and kind != self.objective:
            raise ConfigError(f"strategy.reward={self.objective} but evaluator.objective={kind}: the two keys disagree "
                              "on how candidates are trained. Set strategy.reward alone (evaluator.objective follows "
                              "it), "
                              f"e.g. strategy.reward={kind}.")
        if kind not in REWARDS and self.objective == "ce":
            raise ConfigError(f"strategy.reward=ce trains candidates with cross-entropy, but evaluator=proxy scores "
                              f"them with {kind}. Use evaluator=train (the default for strategy=akd), or "
                              "drop strategy.reward=ce.")
        super().check_reward_kind(kind)
