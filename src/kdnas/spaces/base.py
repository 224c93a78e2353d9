"""Architectures (:class:`Arch`), the search-space protocol (:class:`SearchSpace`) and the space registry (SPACES).

Invariants: ``arch_id`` hashes the canonical JSON of (space, version, decisions), so one network has one id in every
run and process; a space is an ordered list of independent :class:`Decision` s, from which sample / mutate / crossover
/ encode / enumerate derive; a space's own configuration (KDAS's base, NB201's C and N) is stored in every arch as
fixed decisions, so an arch JSON alone rebuilds its network (:func:`space_for`) and a differently configured space
refuses it.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from kdnas.errors import ConfigError
from kdnas.models.features import FeatureNet
from kdnas.registry import Registry
from kdnas.utils import canonical_json, derive_seed, stable_hash

ARCH_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Arch:
    """One architecture: ``decisions`` is flat JSON (values: numbers, strings, lists; KDAS's grown base
    is the one nested value). Equal and hashable by content."""

    space: str
    version: int
    decisions: dict[str, Any]

    def __post_init__(self) -> None:  # a private, JSON-normalised copy (tuples -> lists, no aliasing)
        object.__setattr__(self, "decisions", json.loads(canonical_json(dict(self.decisions))))

    @property
    def arch_id(self) -> str:
        return stable_hash({"space": self.space, "version": self.version, "decisions": self.decisions})

    def __hash__(self) -> int:
        return hash(self.arch_id)

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": ARCH_SCHEMA_VERSION, "space": self.space, "version": self.version,
                "arch_id": self.arch_id, "decisions": self.decisions}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | str) -> Arch:
        data = json.loads(obj) if isinstance(obj, str) else obj
        missing = {"space", "version", "decisions"} - set(data)
        if missing:
            raise ConfigError(f"Architecture JSON lacks {sorted(missing)}: an arch file holds `space`, `version` "
                              "and `decisions` (as written by Arch.to_json / task=search). Check the file you gave.")
        return cls(str(data["space"]), int(data["version"]), dict(data["decisions"]))


@dataclass(frozen=True)
class Decision:
    """One categorical choice: ``name`` and its ordered ``options`` (the controller's action indices)."""

    name: str
    options: list[Any]


class SearchSpace:
    """Base of every space. Subclasses set ``name``/``version``, fill ``self.fixed`` (config stored in each
    arch), and implement :meth:`decisions` and :meth:`build`."""

    name: str = ""
    version: int = 1

    def __init__(self) -> None:
        self.fixed: dict[str, Any] = {}

    # -- what a subclass provides -------------------------------------------------------------------
    def decisions(self) -> list[Decision]:
        raise NotImplementedError

    def build(self, arch: Arch, num_classes: int, input_size: int = 32) -> FeatureNet:
        raise NotImplementedError

    def final_widths(self) -> set[int] | None:
        """Every width the classifier's input (the pooled embedding) can have over the space's archs, known
        without building them; None = not known (callers must then assume the widths vary)."""
        return None

    # -- derived from the decision list ---------------------------------------------------------------
    def make(self, choices: Mapping[str, Any]) -> Arch:
        """An arch from searchable choices (e.g. a controller's), adding the fixed decisions; validated.
        Values equal to an option are replaced by it (True -> 1, 1.0 -> 1), so equal archs share one id."""
        canon = {d.name: d.options[d.options.index(choices[d.name])] for d in self.decisions()
                 if d.name in choices and choices[d.name] in d.options}
        return self.validate(Arch(self.name, self.version, {**dict(choices), **canon, **self.fixed}))

    def sample(self, rng: random.Random) -> Arch:
        return self.make({d.name: rng.choice(d.options) for d in self.decisions()})

    def mutate(self, arch: Arch, rng: random.Random) -> Arch:
        """Change one decision (chosen uniformly among those with >= 2 options) to another option."""
        self.validate(arch)
        free = [d for d in self.decisions() if len(d.options) > 1]
        if not free:
            raise ConfigError(f"Space {self.name!r} has no decision with two options, so nothing can be mutated.")
        d = rng.choice(free)
        current = arch.decisions[d.name]
        return self.make({**arch.decisions, d.name: rng.choice([o for o in d.options if o != current])})

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Uniform crossover: each decision from ``a`` or ``b`` with probability 1/2."""
        self.validate(a)
        self.validate(b)
        return self.make({d.name: (a if rng.random() < 0.5 else b).decisions[d.name] for d in self.decisions()})

    def encode(self, arch: Arch) -> dict[str, Any]:
        return self.validate(arch).to_json()

    def decode(self, obj: Mapping[str, Any] | str) -> Arch:
        return self.validate(Arch.from_json(obj))

    def arch_id(self, arch: Arch) -> str:
        return self.validate(arch).arch_id

    def size(self) -> int | None:
        return math.prod(len(d.options) for d in self.decisions())

    def enumerate(self) -> Iterator[Arch]:
        """Every arch, in lexicographic order of option indices (lazy)."""
        ds = self.decisions()
        for combo in itertools.product(*(d.options for d in ds)):
            yield Arch(self.name, self.version, {**{d.name: o for d, o in zip(ds, combo)}, **self.fixed})

    def for_arch(self, arch: Arch) -> SearchSpace:
        """This space, or the same space configured as ``arch``'s fixed decisions say: KDAS rounds promote the
        best candidate to the next round's base, so one search sees archs of several configurations."""
        if all(arch.decisions.get(k) == v for k, v in self.fixed.items()):
            return self
        return space_for(arch)

    def validate(self, arch: Arch) -> Arch:
        """Return ``arch`` if it belongs to this space (name, version, every key and option), else raise."""
        if arch.space != self.name or arch.version != self.version:
            raise ConfigError(
                f"Architecture {arch.arch_id} is from space {arch.space!r} version {arch.version}, but space "
                f"{self.name!r} version {self.version} is expected. Use an arch searched in this space (or set "
                f"space={arch.space} if that space is still available at that version).")
        options = {d.name: d.options for d in self.decisions()}
        expected = set(options) | set(self.fixed)
        if set(arch.decisions) != expected:
            extra, missing = set(arch.decisions) - expected, expected - set(arch.decisions)
            raise ConfigError(f"Architecture for space {self.name!r} has unknown decisions {sorted(extra)} and lacks "
                              f"{sorted(missing)}. Expected exactly: {sorted(expected)}.")
        for key, value in self.fixed.items():
            if arch.decisions[key] != value:
                raise ConfigError(
                    f"Architecture {arch.arch_id} was made with space.{key}={canonical_json(arch.decisions[key])}, "
                    f"this space has space.{key}={canonical_json(value)}. Configure the space the same way (or "
                    "build it with kdnas.spaces.space_for(arch)).")
        for key, opts in options.items():
            if arch.decisions[key] not in opts:
                raise ConfigError(f"Decision {key}={arch.decisions[key]!r} is not an option of space {self.name!r}; "
                                  f"allowed: {opts}.")
        return arch


# -- registry -----------------------------------------------------------------------------------------
SPACES: Registry[Callable[..., SearchSpace]] = Registry(
    "search space", "space.name", group="space",
    modules=[f"kdnas.spaces.{m}" for m in ("kdas_addon", "mbconv", "nb201", "resnet_cifar")])


def register_space(name: str, factory: Callable[..., SearchSpace] | None = None, *, settings: type | None = None
                   ) -> Any:
    """Register ``factory(**settings) -> SearchSpace`` under ``name``, with the dataclass of its ``space.*`` keys
    (stored as ``schema/space/<name>`` for composition); usable as a class decorator."""
    add = SPACES.register(name, settings=settings)
    return add(factory) if factory is not None else add


def list_spaces() -> list[str]:
    return SPACES.names()


def create_space(name: str, **cfg: Any) -> SearchSpace:
    """Build a registered space; unknown names and keys (those of no field of its settings) raise a ConfigError."""
    SPACES.settings(name, cfg)
    return SPACES.get(name)(**cfg)


def space_from_config(node: Mapping[str, Any] | DictConfig | None) -> SearchSpace:
    """The space a ``space:`` config group node describes (``name`` plus that space's keys)."""
    cfg = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    if "name" not in cfg:
        raise ConfigError("No search space selected: pick one with space=<name> (e.g. space=resnet_cifar); "
                          f"available: {', '.join(list_spaces())}.")
    return create_space(cfg.pop("name"), **cfg)


def space_for(arch: Arch) -> SearchSpace:
    """The space (configured as the arch's fixed decisions say) that ``arch`` belongs to."""
    default = create_space(arch.space)
    return create_space(arch.space, **{k: arch.decisions[k] for k in default.fixed if k in arch.decisions})


def build_candidate(space: SearchSpace, arch: Arch, num_classes: int, input_size: int, seed: int) -> FeatureNet:
    """``arch``'s network with its init drawn from (seed, arch_id): a search evaluator's candidate and task=distill's
    ``student.arch`` get the same weights."""
    torch.manual_seed(derive_seed(seed, "init", arch.arch_id))
    return space.for_arch(arch).build(arch, num_classes, input_size)


def load_arch(source: str | Path | Mapping[str, Any] | Arch, expected_space: str | None = None) -> Arch:
    """An arch from a JSON file, a dict or an Arch, validated against its space (and ``expected_space``)."""
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        try:
            source = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"Cannot read architecture file {str(path)!r} ({e}). Pass the arch.json written by a "
                              "search or export run.") from None
    arch = source if isinstance(source, Arch) else Arch.from_json(source)
    if expected_space is not None and arch.space != expected_space:
        raise ConfigError(f"Architecture {arch.arch_id} is from space {arch.space!r}, but space {expected_space!r} is "
                          f"expected. Use an arch from {expected_space!r} or set space={arch.space}.")
    return space_for(arch).validate(arch)
