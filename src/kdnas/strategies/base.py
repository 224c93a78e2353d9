"""The ask/tell protocol every sample-based search strategy follows (as NNI v3's strategies), and the strategy
registry.

Invariants: ``ask`` proposes only new, constraint-satisfying archs (none once the space has no unseen valid arch
left); ``tell`` never changes the caller's results; a fresh strategy given ``state_dict()`` (its RNG included)
repeats the uninterrupted trajectory.
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
import pkgutil
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from omegaconf import DictConfig, OmegaConf

from kdnas.errors import ConfigError
from kdnas.registry import Registry
from kdnas.spaces.base import Arch, SearchSpace
from kdnas.spaces.constraints import Constraint, sample_valid
from kdnas.spaces.costs import CostModel
from kdnas.utils import derive_seed

if TYPE_CHECKING:
    from kdnas.config import SearchSettings, TeacherConfig, TrainerConfig
    from kdnas.engine.workspace import Workspace
    from kdnas.runs import RunDir

log = logging.getLogger("kdnas")


class SearchInputs(Protocol):
    """What a search reads besides its workspace, typed (:class:`kdnas.search.SearchJob`, which the task layer
    builds; the loop sits above this layer, hence a protocol here)."""

    @property
    def settings(self) -> SearchSettings: ...
    @property
    def space(self) -> SearchSpace: ...
    @property
    def strategy(self) -> Mapping[str, Any]: ...  # the strategy's settings: its name and that strategy's keys
    @property
    def constraint(self) -> Constraint: ...
    @property
    def teacher(self) -> TeacherConfig: ...
    @property
    def recipe(self) -> TrainerConfig | None: ...  # the candidates' training recipe (evaluator=train), else None


def reward_key(result: Mapping[str, Any]) -> float:
    """The reward as a sort key: NaN (a failed proxy) ranks below everything."""
    r = float(result["reward"])
    return -math.inf if math.isnan(r) else r


class Strategy:
    """Shared bookkeeping: the history of told (arch, result) pairs, the ids already proposed, the
    constraint check, and a seeded RNG. The protocol::

        archs = strategy.ask(n)           # up to n new, constraint-satisfying, never-proposed archs
        recorded = strategy.tell(archs, results)  # results in ask order, each a dict with a float ``reward``;
                                          # returns the results as recorded (new dicts: the caller's are not changed)
        state = strategy.state_dict()     # JSON-able (tensors allowed), taken after tell
        strategy.load_state_dict(state)   # a fresh strategy continues exactly where that one was

    ``ask`` may return fewer than ``n`` archs (an evolution still filling its population). Randomness comes from
    ``self.rng`` (a ``random.Random`` seeded from the run seed and the algorithm), whose state is in ``state_dict``."""

    name = ""  # the registered name (set by register_strategy)
    # The algorithm, where registered presets share one (strategy=diswot, strategy=zero_cost: evolution): it names the
    # RNG stream and the state, so presets search alike and resume each other's state. "" = ``name``.
    algorithm = ""
    default_evaluator = "proxy"  # the evaluator its strategy/<name>.yaml selects (proxy | train); tested to agree
    shapes_rewards = False  # a soft constraint shapes this strategy's rewards (else it changes nothing)
    own_loop = False  # runs its own search (Cream's supernet) instead of the shared ask/tell loop

    def __init__(self, space: SearchSpace, *, constraint: Constraint | None = None, costs: CostModel | None = None,
                 seed: int = 0, max_tries: int = 200) -> None:
        self.space, self.constraint = space, constraint or Constraint()
        self.costs = costs or CostModel(space)
        self.max_tries = max_tries
        self.rng = random.Random(derive_seed(seed, "strategy", self.algorithm or self.name))
        self.history: list[tuple[Arch, dict[str, Any]]] = []
        self.seen: set[str] = set()

    # -- the protocol -----------------------------------------------------------------------------
    @classmethod
    def search(cls, ws: Workspace, run: RunDir, job: SearchInputs,
               loop: Callable[[Workspace, RunDir, Any], dict[str, Any]]) -> dict[str, Any]:
        """The whole search of this strategy in the run folder ``run``, returning its summary (with
        ``best_arch_path``). By default the shared ask/tell loop ``loop`` (:func:`kdnas.search.search`, which builds
        the strategy from ``job``, the typed settings): it is passed in because the loop sits above the strategies. A
        strategy with its own loop (``own_loop = True``) overrides this. A classmethod: the loop builds the
        instance."""
        return loop(ws, run, job)

    def ask(self, n: int) -> list[Arch]:
        raise NotImplementedError

    def tell(self, archs: Sequence[Arch], results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """File each result (as :meth:`record` makes it) and return them as recorded, for the loop's history. The
        caller's dicts are never changed, and no two results share an object (a repeated arch, served twice by
        the evaluator's cache, must not be shaped twice)."""
        if len(archs) != len(results):
            raise ValueError(f"tell: {len(archs)} archs but {len(results)} results")
        recorded = []
        for arch, result in zip(archs, results):
            entry = self.record(arch, result)
            self.history.append((arch, entry))
            self.on_result(arch, entry)
            recorded.append(copy.deepcopy(entry))
        return recorded

    def record(self, arch: Arch, result: Mapping[str, Any]) -> dict[str, Any]:
        """The result as this strategy files and ranks it: a deep copy (a subclass adds its reward shaping)."""
        return copy.deepcopy(dict(result))

    def on_result(self, arch: Arch, result: dict[str, Any]) -> None:
        """Subclass hook, called once per told arch in ask order."""

    def check_search(self, *, budget: int, reward_kind: str | None = None) -> None:
        """Called by the search loop before it starts, with its budget and what the evaluator measures
        (``kd`` / ``ce``: trained top-1; ``proxy:<name>``): raise ConfigError for a combination this strategy
        cannot rank, warn about a wasteful one."""
        if reward_kind is not None:
            self.check_reward_kind(reward_kind)
        if self.constraint.mode == "soft" and self.constraint.targets and not self.shapes_rewards:
            log.warning("constraint.mode=soft only shapes the rewards of RL strategies (akd, kdas); strategy=%s ranks "
                        "by the raw reward, so the soft %s target changes nothing. Use constraint.mode=hard to keep "
                        "its candidates within the limit.", self.name, ", ".join(self.constraint.targets))

    def check_reward_kind(self, kind: str) -> None:
        """Raise ConfigError when this strategy cannot rank rewards of ``kind``; every kind is fine by default."""

    def best(self) -> tuple[Arch, dict[str, Any]] | None:
        return max(self.history, key=lambda h: reward_key(h[1]), default=None)

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"name": self.algorithm or self.name, "rng": [version, list(internal), gauss], "seen": sorted(self.seen),
                "history": [{"arch": a.to_json(), "result": r} for a, r in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["name"] != (self.algorithm or self.name):
            raise ConfigError(f"Search state was written by strategy {state['name']!r}, not {self.name!r}: resume "
                              "with the same strategy, or start a new run folder.")
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.seen = set(state["seen"])
        self.history = [(self.space.decode(h["arch"]), dict(h["result"])) for h in state["history"]]

    # -- helpers ----------------------------------------------------------------------------------
    def valid(self, arch: Arch) -> bool:
        """Meets a hard constraint (a soft one only shapes rewards, so every arch is valid)."""
        if self.constraint.mode == "soft" or not self.constraint.targets:
            return True
        return self.constraint.check(self.costs(arch, list(self.constraint.targets)))[0]

    def propose(self, arch: Arch) -> Arch:
        self.seen.add(arch.arch_id)
        return arch

    def sample_new(self) -> Arch | None:
        """A random valid arch not proposed before; None when ``max_tries`` samples found none (a small
        space nearly exhausted). Raises ConstraintError when no sample meets the constraint at all."""
        for _ in range(self.max_tries):
            arch = sample_valid(self.space, self.rng, self.constraint, self.max_tries, self.costs)
            if arch.arch_id not in self.seen:
                return self.propose(arch)
        return None


def _import_strategies() -> None:
    """Import every module of this package once, so that each registers its strategies."""
    import kdnas.strategies as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


STRATEGIES: Registry[type[Strategy]] = Registry("search strategy", "strategy.name", group="strategy",
                                                load=_import_strategies, hint=" (pick one with strategy=<name>)")


def register_strategy(name: str, *, settings: type | None = None) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: register a strategy as ``name`` with the dataclass of its ``strategy.*`` keys (stored as
    ``schema/strategy/<name>`` for composition; its fields are the constructor's keyword arguments)."""

    def add(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        return STRATEGIES.add(name, cls, settings=settings)

    return add


def list_strategies() -> list[str]:
    """The strategies the shared ask/tell loop drives (not those with their own loop, such as cream)."""
    return [name for name in STRATEGIES.names() if not STRATEGIES.get(name).own_loop]


def strategy_class(name: str | None) -> type[Strategy]:
    """The class registered as ``name``; the base class (whose ``search`` runs the shared loop, which reports a
    missing or unknown name) when there is none."""
    return STRATEGIES.get(name) if name in STRATEGIES else Strategy


def create_strategy(node: Mapping[str, Any] | DictConfig | None, space: SearchSpace, *,
                    constraint: Constraint | None = None, costs: CostModel | None = None, seed: int = 0) -> Strategy:
    """The strategy a ``strategy:`` config node describes (``name`` plus that strategy's keys)."""
    cfg = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    name = cfg.pop("name", None)
    if name is None:
        raise ConfigError(f"No search strategy selected: pick one with strategy=<name> (diswot, zero_cost, random); "
                          f"registered strategies: {', '.join(list_strategies())}.")
    if name not in list_strategies():
        renamed = (" strategy.name=evolution is now strategy=diswot (DisWOT's score) or strategy=zero_cost (another "
                   "proxy): the same search, RNG stream and resumable state." if name == "evolution" else "")
        raise ConfigError(f"Unknown search strategy strategy.name={name!r}; available: "
                          f"{', '.join(list_strategies())} (pick one with strategy=<name>).{renamed}")
    STRATEGIES.settings(name, cfg)
    return STRATEGIES.get(name)(space, constraint=constraint, costs=costs, seed=seed, **cfg)
