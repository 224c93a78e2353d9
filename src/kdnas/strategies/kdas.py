"""``strategy=kdas``: KDAS, the iterative search that grows a backbone over ``space=kdas_addon``: one ENAS-macro
controller per round, each candidate's reward its mini-val accuracy after a short oracle distillation.

Invariants: round 0's reference is the base itself (the identity add-on), evaluated first and kept out of the policy
update; every result carries ``kdas_round``, the rounds' summaries are in ``state_dict()["kdas"]["rounds"]``. The
round rule is our reading of the paper (docs/decisions.md, "KDAS").

Reference: Kang, Mun & Han, "Towards Oracle Knowledge Distillation with Neural Architecture Search", AAAI 2020.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kdnas.errors import ConfigError
from kdnas.spaces.base import Arch, SearchSpace, create_space, load_arch
from kdnas.spaces.costs import CostModel
from kdnas.strategies.base import register_strategy, reward_key
from kdnas.strategies.controllers import PolicySettings, PolicyStrategy

log = logging.getLogger("kdnas")


@dataclass
class KDASSettings(PolicySettings):
    """``strategy=kdas`` keys."""

    round_budget: int = 20
    min_gain: float = 0.0
    budget_fill: float = 0.95
    max_rounds: int | None = None
    algo: str = "reinforce"
    hidden: int = 64
    tanh_constant: float | None = 1.5
    op_tanh_reduce: float = 2.5


@register_strategy("kdas", settings=KDASSettings)
class KDASStrategy(PolicyStrategy):
    """Each round an ENAS-macro controller (one LSTM layer of 64, tanh constant 1.5, op tanh reduce 2.5, entropy
    weight 1e-4, skip target 0.4 with KL weight 0.8, Adam lr 1e-3, REINFORCE with a 0.99 moving-average baseline)
    samples one added layer per stage of the current backbone (op + skip links). The loop's train evaluator distils
    each candidate briefly (``distill=oracle`` from ``teacher=ensemble teacher.combine=oracle``, Eq. 4); its mini-val
    accuracy is the reward, times the constraint factor (penalised above the parameter budget M with
    ``constraint.mode=soft constraint.alpha=0 constraint.beta=-1``, or rejected with ``hard``; Eq. 7, ``|m| <= M``).

    After ``round_budget`` evaluated candidates the round's best becomes the new backbone (``space.base`` of the next
    round, so the network grows) and a fresh controller starts, unless the round brought no gain over the backbone
    (reward not above it by more than ``min_gain``), the new backbone uses at least ``budget_fill`` of M
    (``constraint.params_max``), or ``max_rounds`` rounds ran; then ``ask`` returns nothing and the loop ends."""

    def __init__(self, space: SearchSpace, *, round_budget: int = 20, min_gain: float = 0.0, budget_fill: float = 0.95,
                 max_rounds: int | None = None, algo: str = "reinforce", hidden: int = 64, tanh_constant: float = 1.5,
                 op_tanh_reduce: float = 2.5, **kwargs: Any) -> None:
        if space.name != "kdas_addon":
            raise ConfigError(f"strategy=kdas grows a backbone with space=kdas_addon, not space={space.name}.")
        super().__init__(space, algo=algo, hidden=hidden, tanh_constant=tanh_constant, op_tanh_reduce=op_tanh_reduce,
                         **kwargs)
        if not 1 <= self.archs_per_update <= round_budget:
            raise ConfigError(f"strategy.round_budget={round_budget} must be >= strategy.archs_per_update="
                              f"{self.archs_per_update} >= 1, or the controller never learns within a round.")
        self.round_budget, self.min_gain, self.budget_fill, self.max_rounds = (round_budget, min_gain, budget_fill,
                                                                              max_rounds)
        self.round = self.round_told = 0
        self.round_best: int | None = None  # index into history
        self.backbone: Arch | None = None  # None: the configured base (round 0)
        self.backbone_reward: float | None = None  # None: the reference is not evaluated yet
        self.reference_id: str | None = None
        self.stopped: str | None = None
        self.rounds: list[dict[str, Any]] = []

    def identity_addon(self) -> Arch:
        """The base network itself: every added op ``skip``, no links."""
        return self.space.make({d.name: "skip" if "skip" in d.options else 0 for d in self.space.decisions()})

    # -- ask / tell -------------------------------------------------------------------------------
    def ask(self, n: int) -> list[Arch]:
        if self.stopped or n < 1:
            return []
        head = []
        if self.backbone_reward is None:
            reference = self.propose(self.identity_addon())
            self.reference_id, head = reference.arch_id, [reference]
        return head + super().ask(min(n - len(head), self.round_budget - self.round_told))

    def shape(self, arch: Arch, result: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().shape(arch, result), "kdas_round": self.round}

    def on_result(self, arch: Arch, result: dict[str, Any]) -> None:
        if self.backbone_reward is None and arch.arch_id == self.reference_id:
            self.backbone_reward = reward_key(result)
            self.start_baseline()
            return
        super().on_result(arch, result)
        self.round_told += 1
        if self.round_best is None or reward_key(result) > reward_key(self.history[self.round_best][1]):
            self.round_best = len(self.history) - 1  # Strategy.tell files the result before calling on_result
        if self.round_told == self.round_budget:
            self.end_round()

    def end_round(self) -> None:
        """Promote the round's best to backbone, or stop (no gain, budget reached, last round)."""
        arch, result = self.history[self.round_best]
        params = self.costs(arch, ["params"])["params"]
        gain = reward_key(result) - self.backbone_reward
        self.rounds.append({"round": self.round, "best_arch_id": arch.arch_id, "reward": result["reward"],
                            "backbone_reward": self.backbone_reward, "gain": gain, "params": params})
        limit = self.constraint.targets.get("params")
        if not gain > self.min_gain:
            self.stopped = f"round {self.round} brought no gain ({gain:+.4g} <= strategy.min_gain={self.min_gain})"
        else:
            self.backbone_reward, self.round = result["reward"], self.round + 1
            self.set_backbone(arch)
            if limit is not None and params >= self.budget_fill * limit:
                self.stopped = f"the backbone has {params:,} params >= {self.budget_fill} x budget {limit:,.0f}"
            elif self.max_rounds is not None and self.round >= self.max_rounds:
                self.stopped = f"strategy.max_rounds={self.max_rounds} rounds done"
        self.rounds[-1]["stopped"] = self.stopped
        if self.stopped:
            log.info("kdas: search ends: %s", self.stopped)

    def set_backbone(self, arch: Arch) -> None:
        """Start the next round on ``arch``: a space grown from it, its costs, a fresh controller."""
        self.backbone = arch
        self.space = create_space("kdas_addon", base=arch.to_json())
        self.costs = CostModel(self.space, self.costs.num_classes, self.costs.input_size, self.costs.latency_table)
        self.build_policy()
        self.start_baseline()
        self.buffer.clear()
        self.round_told, self.round_best = 0, None

    def start_baseline(self) -> None:
        """A round's REINFORCE baseline starts at its backbone's reward: the candidates are judged against what
        they add to. (Starting at the first reward, a rejected candidate's 0, reinforced a whole round.)"""
        if self.backbone_reward is not None:
            self.learner.baseline = self.reward_scale * self.backbone_reward

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "kdas": {
            "round": self.round, "round_told": self.round_told, "round_best": self.round_best,
            "backbone": None if self.backbone is None else self.backbone.to_json(),
            "backbone_reward": self.backbone_reward, "reference_id": self.reference_id, "stopped": self.stopped,
            "rounds": self.rounds}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        kdas = state["kdas"]
        if kdas["backbone"] is not None:
            self.set_backbone(load_arch(kdas["backbone"]))
        # Earlier rounds' archs belong to spaces with other bases: decoded each by its own space.
        super().load_state_dict({**state, "history": []})
        self.history = [(load_arch(h["arch"]), dict(h["result"])) for h in state["history"]]
        self.round, self.round_told, self.round_best = kdas["round"], kdas["round_told"], kdas["round_best"]
        self.stopped, self.backbone_reward = kdas["stopped"], kdas["backbone_reward"]
        self.reference_id, self.rounds = kdas["reference_id"], list(kdas["rounds"])
