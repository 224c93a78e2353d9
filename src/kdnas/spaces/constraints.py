"""Resource constraints: hard limits for sampling, and MnasNet's latency-aware reward factor.

MnasNet (Tan et al., CVPR 2019, Eq. 2), used by AKD (Liu et al., CVPR 2020):
``reward = ACC * prod_c (COST_c / T_c) ** w_c`` with ``w_c = alpha if COST_c <= T_c else beta``.
Soft targets: alpha = beta = w = -0.07 (smaller nets are rewarded a little, larger ones penalised a
little); hard: alpha = 0, beta = -1 (no effect under the target, a sharp penalty above it). ``alpha`` and
``beta`` override the mode's defaults. A ``hard`` constraint also filters sampling (:func:`sample_valid`,
DisWOT's parameter budget, e.g. 1M params on CIFAR-100); ``soft`` targets only shape the reward.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from kdnas.config import dataclass_from_node
from kdnas.errors import ConfigError, ConstraintError
from kdnas.spaces.base import Arch, SearchSpace
from kdnas.spaces.costs import CostModel

LIMITS = {"params_max": "params", "macs_max": "macs", "flops_max": "flops", "latency_ms_max": "latency_ms"}


@dataclass(frozen=True)
class Constraint:
    params_max: float | None = None
    macs_max: float | None = None  # multiply-adds (what most papers call FLOPs)
    flops_max: float | None = None  # floating-point operations = 2 x MACs
    latency_ms_max: float | None = None  # predicted by the latency table
    mode: str = "hard"  # hard | soft
    w: float = -0.07  # soft exponent
    alpha: float | None = None  # exponent when cost <= target; None: mode default (soft w, hard 0)
    beta: float | None = None  # exponent when cost > target; None: mode default (soft w, hard -1)

    def __post_init__(self) -> None:
        if self.mode not in ("hard", "soft"):
            raise ConfigError(f"constraint.mode={self.mode!r} is not a mode; use hard or soft.")
        for key, target in self.targets_by_key().items():
            if not isinstance(target, (int, float)) or target <= 0:
                raise ConfigError(f"constraint.{key}={target!r} must be a positive number or null (no limit).")

    def targets_by_key(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in LIMITS if getattr(self, k) is not None}

    @property
    def targets(self) -> dict[str, float]:
        """{cost name: target} for every limit that is set."""
        return {LIMITS[k]: t for k, t in self.targets_by_key().items()}

    @property
    def exponents(self) -> tuple[float, float]:
        alpha, beta = (self.w, self.w) if self.mode == "soft" else (0.0, -1.0)
        return (alpha if self.alpha is None else self.alpha, beta if self.beta is None else self.beta)

    def check(self, costs: Mapping[str, float]) -> tuple[bool, list[str]]:
        """(every set limit is met, one line per violated limit)."""
        violations = [f"{LIMITS[k]} {costs[LIMITS[k]]:,.6g} > constraint.{k}={t:,.6g}"
                      for k, t in self.targets_by_key().items() if costs[LIMITS[k]] > t]
        return not violations, violations

    def soft_factor(self, costs: Mapping[str, float]) -> float:
        """prod over set targets of (cost / target) ** (alpha if cost <= target else beta)."""
        alpha, beta = self.exponents
        return math.prod((costs[c] / t) ** (alpha if costs[c] <= t else beta) for c, t in self.targets.items())

    def reward(self, accuracy: float, costs: Mapping[str, float]) -> float:
        return accuracy * self.soft_factor(costs)


def constraint_from_config(node: Mapping[str, Any] | DictConfig | None) -> Constraint:
    """A Constraint from a ``constraint:`` config node (None: no limits); unknown keys raise ConfigError."""
    return dataclass_from_node(Constraint, node, "constraint")


def sample_valid(space: SearchSpace, rng: random.Random, constraint: Constraint, max_tries: int = 200,
                 costs: CostModel | None = None) -> Arch:
    """A random arch meeting a hard constraint (soft: any arch); ConstraintError after ``max_tries`` misses.

    Pass a shared :class:`CostModel` so costs are computed once per arch across calls."""
    if constraint.mode == "soft" or not constraint.targets:
        return space.sample(rng)
    costs = costs or CostModel(space)
    keys = list(constraint.targets)
    smallest: dict[str, float] = {}
    for _ in range(max_tries):
        arch = space.sample(rng)
        c = costs(arch, keys)
        if constraint.check(c)[0]:
            return arch
        smallest = {k: min(smallest.get(k, math.inf), c[k]) for k in keys}
    over = [f"constraint.{k}={t:,.6g} but the smallest {LIMITS[k]} seen was {smallest[LIMITS[k]]:,.6g}"
            for k, t in constraint.targets_by_key().items() if smallest[LIMITS[k]] > t]
    why = "; ".join(over) or "each limit alone was met by some sample, but none met all of them together"
    raise ConstraintError(
        f"No architecture of space {space.name!r} met the constraint in {max_tries} samples: {why}. Raise the "
        "limit (or set it to null), choose a smaller space, or set constraint.mode=soft to penalise instead of reject.")
