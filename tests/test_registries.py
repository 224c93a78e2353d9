"""Every registry against its config options, with ``==`` both ways (a model, space, strategy, proxy, loss term,
scheme or data set added without its option file, or an option file without its registered name, fails here), the
option schemas the registries store (typos and wrong types fail at composition), and the tests parametrized over the
registries (here and in test_models/test_spaces/test_proxies) that pick a new entry up."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

import kdnas.conf
from kdnas.api import compose
from kdnas.data.datasets import BUILDERS
from kdnas.distill.schemes import SCHEMES
from kdnas.distill.terms import LOSS_TERMS, LossWeights
from kdnas.errors import ConfigError
from kdnas.models import MODELS
from kdnas.proxies import PROXIES
from kdnas.registry import NoSettings, Registry, registries
from kdnas.spaces import SPACES, Arch, create_space, list_spaces
from kdnas.strategies import STRATEGIES, create_strategy
from kdnas.strategies.base import list_strategies
from kdnas.tasks.listing import group_options

CONF = Path(kdnas.conf.__file__).parent
# Option files that are not registered names; each says why. Anything else on either side is a mismatch.
EXTRA_OPTIONS = {
    "model": {"timm"},  # any timm network: model.name=timm:<name>, not a registry entry
}
# registry -> the config group whose option files are its names (stem == registered name == the option's `name`).
GROUPS = {MODELS: "model", SPACES: "space", STRATEGIES: "strategy", BUILDERS: "data"}


def options(group: str) -> set[str]:
    return {p.stem for p in (CONF / group).glob("*.yaml")}


def option_value(group: str, option: str, key: str, default: Any = None) -> Any:
    """``key`` of a group option as its file sets it, else the first same-group default's (no Hydra compose: a second
    per option on this machine)."""
    node = OmegaConf.load(CONF / group / f"{option}.yaml")
    if key in node:
        return node[key]
    for parent in node.get("defaults", []):
        if isinstance(parent, str) and (CONF / group / f"{parent}.yaml").is_file():  # not _self_ or a schema
            return option_value(group, parent, key, default)
    return default


def test_every_registry_is_checked_here() -> None:
    """A new registry needs a row below (its options, or what else its names must equal)."""
    assert set(registries().values()) == {*GROUPS, LOSS_TERMS, SCHEMES, PROXIES}  # PROXIES: evaluator.proxy's values


@pytest.mark.parametrize("registry", list(GROUPS), ids=lambda r: r.kind)
def test_group_options_are_the_registry(registry: Registry[Any]) -> None:
    """Option stems == registered names, and each option's ``name`` is its stem."""
    group = GROUPS[registry]
    named = options(group) - EXTRA_OPTIONS.get(group, set())
    assert named == set(registry.names())
    assert {o: option_value(group, o, "name") for o in named} == {o: o for o in named}


def test_loss_weights_are_the_loss_terms() -> None:
    """``distill.weights.<term>`` exists exactly for the registered loss terms (0 = off)."""
    assert {f.name for f in dataclasses.fields(LossWeights)} == set(LOSS_TERMS.names())


def test_distill_presets_are_the_schemes() -> None:
    """Every registered scheme has its ``distill=<scheme>`` preset and every preset's scheme is registered."""
    named = {o: option_value("distill", o, "scheme", "none") for o in options("distill")}
    assert {s for s in named.values() if s != "none"} == set(SCHEMES.names())
    assert all(named[s] == s for s in SCHEMES.names())


def _keyword_defaults(cls: type, skip: set[str]) -> dict[str, Any]:
    """The keyword arguments a class accepts through its ``__init__`` chain, with their defaults (the most derived
    class's default wins)."""
    out: dict[str, Any] = {}
    for c in reversed(cls.__mro__):
        if "__init__" in vars(c):
            out.update({n: p.default for n, p in inspect.signature(c.__init__).parameters.items()
                        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in skip | {"self"}})
    return out


def _as_list(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


@pytest.mark.parametrize("name", [*SPACES.names(), *list_strategies()])
def test_settings_are_the_constructor_keywords(name: str) -> None:
    """A space's or an ask/tell strategy's settings dataclass (its composition schema) has exactly the keyword
    arguments of what it builds, with the same defaults: a composed config builds what the bare class would."""
    registry = SPACES if name in SPACES else STRATEGIES
    entry = registry.entry(name)
    settings = (entry.settings or NoSettings)()
    expected = _keyword_defaults(entry.obj, {"space", "constraint", "costs", "seed"})
    assert {k: _as_list(v) for k, v in expected.items()} == dataclasses.asdict(settings)


@pytest.mark.parametrize("group", ["space", "strategy", "constraint", "model", "distill"])
def test_unknown_key_fails_at_composition(group: str) -> None:
    with pytest.raises(ConfigError, match=rf"{group}\.not_a_key.*{group} takes: "):
        compose(None, [f"{group}.not_a_key=1"])


@pytest.mark.parametrize("override", ["space.depths=abc", "strategy.population=many", "constraint.params_max=big",
                                      "model.pretrained=maybe", "distill.temperature=hot",
                                      "strategy=akd strategy.hidden=wide", "space=nb201 space.C=x"])
def test_wrong_type_fails_at_composition(override: str) -> None:
    """Typed per option: before, space/strategy/constraint were ``Any`` and these composed, failing only in the task."""
    key = override.split()[-1].split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}"):
        compose(None, override.split())


def test_a_typo_in_an_experiment_file_fails_at_composition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "typo.yaml").write_text(
        "# @package _global_\ntask: search\nstrategy:\n  populaton: 8\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="populaton"):
        compose(None, ["experiment=typo"])


def test_an_added_key_is_refused_when_the_option_is_built() -> None:
    """``+strategy.key=...`` passes Hydra's composition (an addition); the registry refuses it in one paragraph."""
    cfg = compose(None, ["+strategy.populaton=8"])
    with pytest.raises(ConfigError, match=r"strategy\.populaton for search strategy 'diswot'; known: .*"
                                          r"strategy\.population") as e:
        create_strategy(cfg.strategy, create_space("resnet_cifar"))
    assert "\n" not in str(e.value)


def test_schemas_are_not_options() -> None:
    """The option schemas live under schema/, which `task=list` and `kdnas --help` leave out."""
    groups = group_options()
    assert "schema" not in groups and not any("schema" in o for opts in groups.values() for o in opts)
    with pytest.raises(ConfigError):
        compose(None, ["space=schema"])


@pytest.mark.parametrize("registry", [*GROUPS, LOSS_TERMS, SCHEMES, PROXIES], ids=lambda r: r.kind)
def test_unknown_name_is_one_paragraph_with_the_known_names(registry: Registry[Any]) -> None:
    with pytest.raises(ConfigError) as e:
        registry.get(registry.names()[0] + "x")
    message = str(e.value)
    assert "\n" not in message and f"{registry.key}='{registry.names()[0]}x'" in message
    assert f"Did you mean {registry.names()[0]}" in message and all(name in message for name in registry.names())


def test_a_name_registers_once() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        SPACES.add("resnet_cifar", create_space)


def _reward(archs: list[Arch]) -> list[dict[str, Any]]:
    """A deterministic reward per arch (from its id), the only key every strategy reads."""
    return [{"reward": int(a.arch_id[:8], 16) % 1000 / 10} for a in archs]


def _strategy(name: str, seed: int) -> Any:
    """``name`` on the first registered space it accepts, the small resnet_cifar first (KDAS grows kdas_addon
    backbones only)."""
    for space in sorted(list_spaces(), key=lambda s: s != "resnet_cifar"):
        try:
            return create_strategy({"name": name}, create_space(space), seed=seed)
        except ConfigError:
            continue
    raise AssertionError(f"strategy {name!r} accepts no registered space")


@pytest.mark.parametrize("name", list_strategies())
def test_every_strategy_asks_tells_and_resumes(name: str) -> None:
    """Two batches of ask/tell with no arch proposed twice; a fresh strategy loaded from the state dict asks the
    same next batch as the one it was saved from."""
    strategy = _strategy(name, seed=0)
    asked: list[Arch] = []
    for _ in range(2):
        archs = strategy.ask(4)
        assert archs and all(strategy.space.validate(a) for a in archs)
        strategy.tell(archs, _reward(archs))
        asked += archs
    assert len({a.arch_id for a in asked}) == len(asked) == len(strategy.history)
    resumed = _strategy(name, seed=1)
    resumed.load_state_dict(strategy.state_dict())
    assert [a.arch_id for a in resumed.ask(4)] == [a.arch_id for a in strategy.ask(4)]


def test_evolution_presets_search_alike_and_share_state() -> None:
    """strategy=diswot and strategy=zero_cost are one algorithm under two registered names: the evolution's RNG stream
    (as when both were `name: evolution`, so searches repeat), and a state either resumes."""
    space = create_space("resnet_cifar")
    diswot, zero_cost = (create_strategy({"name": n}, space, seed=3) for n in ("diswot", "zero_cost"))
    assert (diswot.name, zero_cost.name) == ("diswot", "zero_cost")
    first = diswot.ask(4)
    assert [a.arch_id for a in first] == [a.arch_id for a in zero_cost.ask(4)]
    diswot.tell(first, _reward(first))
    resumed = create_strategy({"name": "zero_cost"}, space, seed=0)
    resumed.load_state_dict(diswot.state_dict())
    assert [a.arch_id for a in resumed.ask(4)] == [a.arch_id for a in diswot.ask(4)]


@pytest.mark.parametrize(("override", "key", "value"), [
    ("constraint.params_max=1000000", "constraint.params_max", 1000000),
    ("constraint=params_1m", "constraint.params_max", 1000000),
    ("strategy=akd strategy.entropy_weight=0", "strategy.entropy_weight", 0),
    ("distill.temperature=4", "distill.temperature", 4.0),
])
def test_typed_options_keep_the_values_they_composed_to_before(override: str, key: str, value: Any) -> None:
    """Groups untyped before the registry (space, strategy, constraint) keep an int given to a float field: the value
    is in the config hash, so 1000000.0 would refuse to resume (and re-run in a sweep) every folder made with
    ``constraint.params_max=1000000``. The distill group was typed before: its floats stay floats."""
    composed = OmegaConf.select(compose(None, override.split()), key)
    assert composed == value and type(composed) is type(value)


def test_the_name_evolution_of_before_the_presets_names_them() -> None:
    """strategy.name=evolution (what strategy=diswot and zero_cost composed to before issue 17, so a user's own
    strategy file may hold it) fails naming the registered names that replace it."""
    with pytest.raises(ConfigError, match="strategy=diswot.*strategy=zero_cost"):
        create_strategy({"name": "evolution"}, create_space("resnet_cifar"))
