"""Random search: uniform samples of the space that meet the constraint, never the same arch twice
(Li & Talwalkar, "Random Search and Reproducibility for NAS", UAI 2019: the baseline to beat)."""

from __future__ import annotations

from dataclasses import dataclass

from kdnas.spaces.base import Arch
from kdnas.strategies.base import Strategy, register_strategy


@dataclass
class RandomSettings:
    """``strategy=random`` keys."""

    max_tries: int = 200  # samples drawn to find an unseen valid arch before the space counts as exhausted


@register_strategy("random", settings=RandomSettings)
class RandomStrategy(Strategy):
    def ask(self, n: int) -> list[Arch]:
        out = []
        for _ in range(n):
            arch = self.sample_new()
            if arch is None:
                break
            out.append(arch)
        return out
