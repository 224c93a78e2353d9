"""Evolutionary search, the DisWOT way (``variant=diswot``: the worst member leaves) or as aging evolution
(``variant=aging``: the oldest leaves); ``strategy=zero_cost`` is the same search driven by another proxy.

Invariants: the parent comes from the sample's best, every child meets the constraint, and no arch is proposed twice.
Departures from the official loop and where the defaults come from: docs/decisions.md, "Evolution".

References: DisWOT, Dong et al., CVPR 2023, Algorithm 1; Real et al., "Regularized Evolution for Image Classifier
Architecture Search", AAAI 2019.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kdnas.errors import ConfigError
from kdnas.spaces.base import Arch
from kdnas.strategies.base import Strategy, log, register_strategy, reward_key

VARIANTS = ("diswot", "aging")


@dataclass
class EvolutionSettings:
    """``strategy=diswot`` / ``strategy=zero_cost`` keys."""

    population: int = 16
    sample_size: int = 8
    top_k: int = 3
    variant: str = "diswot"  # diswot | aging
    max_tries: int = 200


class EvolutionStrategy(Strategy):
    """The population starts as ``population`` random archs meeting the constraint; each step samples
    ``sample_size`` members, keeps the ``top_k`` best, picks one of those at random as the parent and mutates it (one
    decision changed; a child that fails the constraint or was proposed before is re-drawn, up to ``max_tries``
    mutations, then a fresh random arch). The child joins the population and the worst member (``diswot``) or the
    oldest (``aging``, usually ``top_k=1``) leaves. A ``search.budget`` that does not exceed the population never
    breeds a child (a random search): :meth:`check_search` warns."""

    def __init__(self, space: Any, *, population: int = 16, sample_size: int = 8, top_k: int = 3,
                 variant: str = "diswot", **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        if variant not in VARIANTS:
            raise ConfigError(f"strategy.variant={variant!r} is not one of {', '.join(VARIANTS)}.")
        if not 1 <= top_k <= sample_size <= population:
            raise ConfigError(f"strategy needs 1 <= top_k <= sample_size <= population, got top_k={top_k}, "
                              f"sample_size={sample_size}, population={population}.")
        self.population_size, self.sample_size, self.top_k, self.variant = population, sample_size, top_k, variant
        self.population: list[tuple[Arch, dict[str, Any]]] = []  # oldest first

    def ask(self, n: int) -> list[Arch]:
        filling = len(self.history) < self.population_size
        count = min(n, self.population_size - len(self.history)) if filling else n
        out = []
        for _ in range(count):
            arch = self.sample_new() if filling else self.child()
            if arch is None:
                break
            out.append(arch)
        return out

    def child(self) -> Arch | None:
        """Mutate a parent drawn from the top-k of a random sample until the child is valid and new."""
        for _ in range(self.max_tries):
            sample = self.rng.sample(self.population, min(self.sample_size, len(self.population)))
            top = sorted(sample, key=lambda m: reward_key(m[1]), reverse=True)[: self.top_k]
            child = self.space.mutate(self.rng.choice(top)[0], self.rng)
            if child.arch_id not in self.seen and self.valid(child):
                return self.propose(child)
        return self.sample_new()

    def check_search(self, *, budget: int, reward_kind: str | None = None) -> None:
        super().check_search(budget=budget, reward_kind=reward_kind)
        if budget <= self.population_size:
            log.warning("search.budget=%d <= strategy.population=%d: the search ends while the population is still "
                        "being filled with random archs, so no child is ever bred (this is a random search). Raise "
                        "search.budget above the population, or lower strategy.population.", budget,
                        self.population_size)

    def on_result(self, arch: Arch, result: dict[str, Any]) -> None:
        self.population.append((arch, result))
        if len(self.population) > self.population_size:
            drop = 0 if self.variant == "aging" else min(range(len(self.population)),
                                                         key=lambda i: reward_key(self.population[i][1]))
            del self.population[drop]

    def state_dict(self) -> dict[str, Any]:
        ids = {a.arch_id: i for i, (a, _) in enumerate(self.history)}
        return {**super().state_dict(), "population": [ids[a.arch_id] for a, _ in self.population]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.population = [self.history[i] for i in state["population"]]


@register_strategy("diswot", settings=EvolutionSettings)
class DisWOTEvolution(EvolutionStrategy):
    """``strategy=diswot``: the evolution, as DisWOT runs it on its training-free score (evaluator.proxy=diswot)."""

    algorithm = "evolution"


@register_strategy("zero_cost", settings=EvolutionSettings)
class ZeroCostEvolution(EvolutionStrategy):
    """``strategy=zero_cost``: the same evolution driven by a zero-cost proxy (evaluator.proxy=snip, synflow,
    naswot, ...)."""

    algorithm = "evolution"
