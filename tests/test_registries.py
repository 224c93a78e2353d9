"""Every registry against its config options, with ``==`` both ways: a model, space, strategy, proxy, loss term or
scheme added without its option file (or an option file without its registered name) fails here, and the tests
parametrized over the registries (here and in test_models/test_spaces/test_proxies) pick a new entry up."""

from __future__ import annotations

import dataclasses
import pkgutil
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

import kdnas.conf
import kdnas.distill.schemes
from kdnas.distill.terms import TERMS, LossWeights
from kdnas.errors import ConfigError
from kdnas.models import list_models
from kdnas.proxies import list_proxies
from kdnas.spaces import Arch, create_space, list_spaces
from kdnas.strategies import create_strategy
from kdnas.strategies.base import list_strategies

CONF = Path(kdnas.conf.__file__).parent
# Registered names without an option file of their own, and option files that are not registered names; each says
# why. Anything else on either side is a mismatch.
MODEL_EXTRA_OPTIONS = {"timm"}  # any timm network: model.name=timm:<name>, not a registry entry
MODELS_WITHOUT_OPTION = {"mobilenetv2_w1"}  # width 1.0 variant, selected with model.name=mobilenetv2_w1
PROXY_BASE_FILES = {"common"}  # the settings every proxy file extends, not a proxy
SUPERNET_STRATEGIES = {"cream"}  # weight-sharing: run by task=search itself, not an ask/tell registry entry


def options(group: str) -> set[str]:
    return {p.stem for p in (CONF / group).glob("*.yaml")}


def option_value(group: str, option: str, key: str, default: Any = None) -> Any:
    """``key`` of a group option as it composes: its own value, else the first same-group default's (no Hydra
    compose: a second per option on this machine)."""
    node = OmegaConf.load(CONF / group / f"{option}.yaml")
    if key in node:
        return node[key]
    for parent in node.get("defaults", []):
        if isinstance(parent, str) and (CONF / group / f"{parent}.yaml").is_file():  # not _self_ or a schema
            return option_value(group, parent, key, default)
    return default


def test_model_options_are_the_model_registry() -> None:
    assert options("model") - MODEL_EXTRA_OPTIONS == set(list_models()) - MODELS_WITHOUT_OPTION
    assert {o: option_value("model", o, "name") for o in options("model") - MODEL_EXTRA_OPTIONS} == {
        o: o for o in options("model") - MODEL_EXTRA_OPTIONS}


def test_space_options_are_the_space_registry() -> None:
    assert options("space") == set(list_spaces())
    assert {o: option_value("space", o, "name") for o in options("space")} == {o: o for o in options("space")}


def test_proxy_options_are_the_proxy_registry() -> None:
    assert options("proxy") - PROXY_BASE_FILES == set(list_proxies())
    assert {o: option_value("proxy", o, "name") for o in options("proxy") - PROXY_BASE_FILES} == {
        o: o for o in options("proxy") - PROXY_BASE_FILES}


def test_strategy_options_name_every_registered_strategy() -> None:
    named = {option_value("strategy", o, "name") for o in options("strategy")}
    assert named == set(list_strategies()) | SUPERNET_STRATEGIES


def test_loss_weights_are_the_loss_terms() -> None:
    """``distill.weights.<term>`` exists exactly for the registered loss terms (0 = off)."""
    assert {f.name for f in dataclasses.fields(LossWeights)} == set(TERMS)


def test_distill_options_cover_the_schemes() -> None:
    """Every module of kdnas.distill.schemes has a ``distill=`` preset, and every preset's scheme exists."""
    schemes = {m.name for m in pkgutil.iter_modules(kdnas.distill.schemes.__path__)}
    named = {option_value("distill", o, "scheme", "none") for o in options("distill")}
    assert named - {"none"} == schemes


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
