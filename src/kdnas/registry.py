"""One generic registry: names -> objects (factories, classes, functions), each with an optional settings dataclass.

Invariants: a name is registered once; lookups load the registering modules first, so ``names()`` is complete; an
unknown name raises one :class:`~kdnas.errors.ConfigError` paragraph naming the key, close matches and every known
name; a registry bound to a config ``group`` types each option by its settings dataclass (:meth:`Registry.add`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import operator
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from kdnas.config import dataclass_from_node
from kdnas.errors import ConfigError

T = TypeVar("T")
SCHEMA_GROUP = "schema"  # ConfigStore group holding every option schema: schema/<group>/<name>
_REGISTRIES: dict[str, Registry[Any]] = {}


@dataclass
class NoSettings:
    """The settings of an entry that takes no config keys."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    settings: type | None  # the dataclass of this entry's config keys (besides ``name``); None: no keys


class Registry(Generic[T]):
    """``kind`` names the registry in messages and :func:`registries`; ``key`` is the config key that selects an entry
    (``space.name``); ``group`` the config group whose options are the entries (None: not a group); ``modules`` are
    imported before the first lookup (their decorators register the entries), or ``load`` is called instead."""

    def __init__(self, kind: str, key: str, *, group: str | None = None, modules: Sequence[str] = (),
                 load: Callable[[], None] | None = None, hint: str = "") -> None:
        if kind in _REGISTRIES:
            raise ValueError(f"registry {kind!r} created twice")
        self.kind, self.key, self.group, self.hint = kind, key, group, hint
        self._modules, self._load = tuple(modules), load
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False
        _REGISTRIES[kind] = self

    # -- registering ------------------------------------------------------------------------------------------
    def register(self, name: str | None = None, *, settings: type | None = None) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` (default: its ``__name__``)."""

        def add(obj: T) -> T:
            return self.add(name or obj.__name__, obj, settings=settings)  # type: ignore[attr-defined]

        return add

    def add(self, name: str, obj: T, *, settings: type | None = None) -> T:
        """Register ``obj`` as ``name``. With a ``group``, the settings dataclass (plus a ``name`` field) is stored in
        Hydra's ConfigStore as ``schema/<group>/<name>``; the option ``<group>/<name>.yaml`` starts its defaults list
        with ``/schema/<group>/<name>@_here_``, so a wrong type or a key the schema lacks (in a yaml file, or
        overridden without ``+``) fails at composition; a ``+group.key`` addition is caught by :meth:`settings` when
        the option is built. Schemas live under ``schema/`` so that they are never offered as options of the group."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        if settings is not None and not dataclasses.is_dataclass(settings):
            raise TypeError(f"{self.kind} {name!r}: settings must be a dataclass, got {settings!r}")
        self._entries[name] = Entry(name, obj, settings)
        if self.group is not None:  # an entry without settings composes to ``name`` alone
            ConfigStore.instance().store(group=f"{SCHEMA_GROUP}/{self.group}", name=name,
                                         node=option_schema(settings or NoSettings, name))
        return obj

    # -- looking up ---------------------------------------------------------------------------------------------
    def load(self) -> Registry[T]:
        """Import the registering modules (once)."""
        if not self._loaded:
            self._loaded = True
            for module in self._modules:
                importlib.import_module(module)
            if self._load is not None:
                self._load()
        return self

    def names(self) -> list[str]:
        return sorted(self.load()._entries)

    def __contains__(self, name: object) -> bool:
        return name in self.load()._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.load()._entries)

    def entry(self, name: str) -> Entry[T]:
        if name not in self:
            raise self.unknown(name)
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def unknown(self, name: Any) -> ConfigError:
        close = difflib.get_close_matches(str(name), self._entries, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return ConfigError(f"Unknown {self.kind} {self.key}={name!r}.{hint} Known: {', '.join(self.names())}"
                           f"{self.hint}.")

    def settings(self, name: str, node: Mapping[str, Any] | DictConfig | None) -> Any:
        """Entry ``name``'s settings dataclass from a config node (its ``name`` key ignored); an unknown key raises one
        ConfigError naming it and the accepted ones. A node composed from the option is checked already; this also
        covers plain dicts (an arch's fixed decisions, the Python API) and keys added with ``+group.key=``."""
        settings = self.entry(name).settings
        cfg = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
        cfg.pop("name", None)
        if settings is None and cfg:
            raise ConfigError(f"Unknown key(s) {', '.join(f'{self.group}.{k}' for k in sorted(cfg))} for "
                              f"{self.kind} {name!r}; it takes no keys besides {self.key}.")
        return None if settings is None else dataclass_from_node(settings, cfg, str(self.group),
                                                                 f" for {self.kind} {name!r}")


def option_schema(settings: type, name: str | None = None, *, keep_ints: bool = True) -> type:
    """The node an option composes onto: ``settings``'s fields (types resolved, defaults kept; a frozen dataclass
    gives a writable copy, and no ``__post_init__`` runs at composition), after a ``name`` field defaulting to
    ``name`` when given. Every field needs a default: an option must compose from its yaml alone. ``keep_ints``: a
    float field also takes an int and keeps it (``constraint.params_max=1000000`` stays 1000000, as when these
    groups were untyped, so config hashes and run folders do not change)."""
    hints = {k: _widen(t) if keep_ints else t for k, t in typing.get_type_hints(settings).items()}
    specs: list[tuple[str, Any, Any]] = [("name", str, dataclasses.field(default=name))] if name is not None else []
    for f in dataclasses.fields(settings):
        if name is not None and f.name == "name":
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"{settings.__name__}.{f.name} has no default; every option setting needs one")
        default = (dataclasses.field(default=f.default) if f.default is not dataclasses.MISSING
                   else dataclasses.field(default_factory=f.default_factory))
        specs.append((f.name, hints[f.name], default))
    return dataclasses.make_dataclass(settings.__name__, specs)


def _widen(hint: Any) -> Any:
    """``hint`` with every ``float`` (also inside Optional, Union, list, dict) widened to ``int | float``."""
    if hint is float:
        return int | float
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return functools.reduce(operator.or_, (_widen(a) for a in args))
    if origin is list:
        return list[_widen(args[0])]
    if origin is dict:
        return dict[args[0], _widen(args[1])]
    return hint


def store_schema(group: str, settings: type, *, keep_ints: bool = True) -> None:
    """Store one schema for every option of ``group`` (whose options are presets of one dataclass, such as
    ``distill`` and ``constraint``) as ``schema/<group>``; each option's defaults start with
    ``/schema/<group>@_here_``. ``keep_ints``: as :func:`option_schema` (False for a group typed before)."""
    ConfigStore.instance().store(group=SCHEMA_GROUP, name=group, node=option_schema(settings, keep_ints=keep_ints))


def registries() -> dict[str, Registry[Any]]:
    """Every registry created so far, by kind."""
    return dict(_REGISTRIES)
