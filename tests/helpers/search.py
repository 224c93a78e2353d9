"""A strategy configuration and a synthetic evaluator shared by the search tests."""

from __future__ import annotations

from typing import Any

from kdnas.spaces import Arch

EVOLUTION = {"name": "diswot", "population": 8, "sample_size": 4, "top_k": 2}


class Synthetic:
    """A deterministic reward peaked at depths (5, 3, 7); optionally fails on its n-th call (a kill)."""

    fingerprint = "synthetic"

    def __init__(self, crash_on_call: int | None = None) -> None:
        self.calls, self.crash_on_call = 0, crash_on_call

    def evaluate(self, archs: list[Arch]) -> list[dict[str, Any]]:
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise KeyboardInterrupt("simulated kill")
        return [{"reward": self.reward(*(a.decisions[f"depth{i}"] for i in (1, 2, 3)))} for a in archs]

    @staticmethod
    def reward(d1: int, d2: int, d3: int) -> float:
        return -((d1 - 5) ** 2 + (d2 - 3) ** 2 + (d3 - 7) ** 2) + 0.01 * d1
