"""The ``evaluator`` config group (proxy | train): each strategy's default, typed options, the candidates' recipe as a
full trainer node that follows the run's, the old spellings refused with the new one named, and the evaluation cache
identity unchanged by the move."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

import kdnas
from kdnas import context
from kdnas.api import CompositionError, compose
from kdnas.config import ProxyEvaluatorConfig, SearchSettings, TrainerConfig, to_object
from kdnas.context import RunContext, config_hash
from kdnas.errors import ConfigError
from kdnas.evaluators import ProxySettings, proxy_evaluator
from kdnas.runs import RunDir
from kdnas.spaces import create_space
from kdnas.strategies.base import list_strategies, strategy_class
from kdnas.tasks.listing import group_options
from kdnas.tasks.search import evaluator_settings, proxy_settings, teacher_settings

from .helpers import SMOKE, kdnas_cli


@pytest.mark.parametrize("strategy", [*list_strategies(), "cream"])
def test_each_strategy_option_selects_its_default_evaluator(strategy: str) -> None:
    """strategy/<name>.yaml's evaluator is the class's ``default_evaluator`` (train for akd, kdas, cream)."""
    cfg = compose("search", [f"strategy={strategy}"])
    assert cfg.evaluator.kind == strategy_class(strategy).default_evaluator


def test_the_command_line_evaluator_wins_over_the_strategys() -> None:
    assert compose("search", ["strategy=akd", "evaluator=proxy"]).evaluator.kind == "proxy"
    assert compose("search", ["evaluator=proxy", "strategy=akd"]).evaluator.kind == "proxy"
    assert compose("search", ["strategy=random", "evaluator=train"]).evaluator.kind == "train"


def test_cream_refuses_a_proxy_evaluator(tmp_path: Path) -> None:
    """Cream's supernet trains with the candidates' recipe: a proxy evaluator has none."""
    with pytest.raises(ConfigError, match="drop evaluator=proxy"):
        kdnas.run("search", [*SMOKE, "space=mbconv_cream", "strategy=cream", "evaluator=proxy"], run_dir=tmp_path)


def test_the_options_are_proxy_and_train_only() -> None:
    """The ConfigStore schemas (schema/evaluator/*) are not options of the group."""
    assert set(group_options()["evaluator"]) == {"proxy", "train"}


@pytest.mark.parametrize("override", ["evaluator.proxi=snip", "evaluator.batch_size=many", "evaluator.trainer.lr=x",
                                      "evaluator.trainer.epoch=1"])
def test_a_typo_or_a_wrong_type_fails_at_composition(override: str) -> None:
    options = ["evaluator=train"] if "trainer" in override else []
    with pytest.raises(CompositionError, match=override.split("=")[0].rsplit(".", 1)[-1]):
        compose("search", [*options, override])


def test_the_candidates_recipe_is_the_runs_trainer_with_its_own_keys_on_top() -> None:
    """evaluator.trainer is a full trainer node; trainer=/trainer.KEY reach it (as `trainer` + `search.trainer`
    overrides did), evaluator.trainer.KEY changes the candidates alone."""
    cfg = compose("search", ["evaluator=train", "trainer=short", "trainer.lr=0.2", "evaluator.trainer.epochs=1"])
    recipe = to_object(cfg.evaluator.trainer, TrainerConfig)
    assert recipe == dataclasses.replace(to_object(cfg.trainer, TrainerConfig), epochs=1)
    assert (recipe.lr, cfg.trainer.epochs) == (0.2, 30)
    whole = compose("search", ["evaluator=train", "trainer@evaluator.trainer=cifar_240"])
    assert whole.evaluator.trainer.epochs == 240 and whole.trainer.epochs != 240


def test_a_trainer_option_for_the_candidates_keeps_the_config_hash_on_its_defaults(
        caplog: pytest.LogCaptureFixture) -> None:
    """trainer@evaluator.trainer=OPTION (the candidates get that trainer option whole) is a choice of the defaults
    list, so the config hash composes the packaged defaults with it: no fallback to hashing every value (a warning
    on every run, and a hash that a later kdnas's new keys would change)."""
    context._packaged_defaults.cache_clear()
    with caplog.at_level(logging.WARNING, logger="kdnas"):
        cfg = compose("search", ["strategy=akd", "trainer@evaluator.trainer=short"])
        digest = config_hash(cfg)
    assert "config hash" not in caplog.text
    assert cfg.evaluator.trainer.epochs == 30 and cfg.trainer.epochs != 30
    assert digest != config_hash(compose("search", ["strategy=akd"]))


def test_a_result_neutral_key_of_the_candidates_recipe_leaves_the_hash() -> None:
    """trainer.log_every (and checkpoint_every) reach evaluator.trainer by interpolation: still result-neutral."""
    base = ["strategy=akd"]
    same = config_hash(compose("search", base))
    assert config_hash(compose("search", [*base, "trainer.log_every=7"])) == same
    assert config_hash(compose("search", [*base, "evaluator.trainer.checkpoint_every=3"])) == same
    assert config_hash(compose("search", [*base, "evaluator.trainer.epochs=1"])) != same


def test_proxy_settings_have_the_proxy_options_keys() -> None:
    """ProxySettings (whose asdict is the cache identity) and the proxy option's schema hold the same keys."""
    option = {f.name for f in dataclasses.fields(ProxyEvaluatorConfig)} - {"kind", "proxy"}
    assert {f.name for f in dataclasses.fields(ProxySettings)} - {"name"} == option


OLD = {"proxy=snip": "evaluator.proxy=snip", "proxy.combine=rank": "evaluator.combine=rank",
       "proxy.name=synflow": "evaluator.proxy=synflow", "search.evaluator=train": "evaluator=train",
       "search.objective=ce": "evaluator.objective=ce", "+search.trainer.epochs=1": "evaluator.trainer.epochs=1",
       "++search.trainer.max_steps_per_epoch=2": "evaluator.trainer.max_steps_per_epoch=2"}


@pytest.mark.parametrize("old", list(OLD))
def test_an_old_spelling_fails_naming_the_new_one(old: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose("search", [old])
    message = str(info.value)
    assert repr(OLD[old]) in message and "\n" not in message


@pytest.mark.parametrize("old", ["search.evaluator=null", "~search.evaluator", "~proxy", "~search.trainer"])
def test_an_old_spelling_that_meant_the_default_says_to_drop_it(old: str) -> None:
    """search.evaluator=null meant "the strategy's default", which is now what no override gives: naming
    `evaluator=null` (a Hydra traceback) or a bare key such as `evaluator` (not an override) would mislead."""
    with pytest.raises(ConfigError) as info:
        compose("search", [old])
    message = str(info.value)
    assert "drop it" in message and "write" not in message and "\n" not in message
    with pytest.raises(ConfigError, match="drop it"):
        SearchSettings.from_config({"budget": 4, "evaluator": None})  # the old search/default.yaml, copied


def test_an_old_key_in_a_config_file_fails_naming_the_new_one() -> None:
    with pytest.raises(ConfigError, match="'evaluator=train'"):
        SearchSettings.from_config({"budget": 4, "evaluator": "train"})
    with pytest.raises(ConfigError, match="'evaluator.trainer.epochs=5'"):
        SearchSettings.from_config({"trainer": {"epochs": 5}})


@pytest.mark.slow
def test_the_cli_refuses_an_old_spelling_in_one_line(tmp_path: Path) -> None:
    proc = kdnas_cli("task=search", "proxy=snip", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "'evaluator.proxy=snip'" in proc.stderr


def test_the_proxy_evaluation_cache_identity_is_unchanged(tmp_path: Path) -> None:
    """The fingerprint of the default proxy evaluator (DisWOT, smoke data) recorded before the evaluator group
    existed (proxy=diswot, commit 8e39ccb): the same settings find the same cached scores."""
    cfg = compose("search", [*SMOKE, "strategy=random", f"paths.cache_dir={tmp_path}"])
    ctx = RunContext(cfg, RunDir(tmp_path / "run"))
    assert isinstance(evaluator_settings(ctx), ProxySettings)
    evaluator = proxy_evaluator(ctx.workspace, create_space("resnet_cifar"), proxy_settings(ctx), teacher_settings(ctx))
    assert evaluator.fingerprint == "7d3ce591d0f98b74"


@pytest.mark.parametrize("overrides", [["+evaluator.foo=1"], ["evaluator=train", "+evaluator.foo=1"],
                                       ["evaluator=train", "+evaluator.trainer.foo=1"]])
def test_a_key_added_to_the_evaluator_is_one_config_error(overrides: list[str], tmp_path: Path) -> None:
    """``+evaluator.KEY=`` passes composition; building the settings names the key (not a TypeError's traceback,
    and never silently ignored)."""
    ctx = RunContext(compose("search", overrides), RunDir(tmp_path / "run"))
    with pytest.raises(ConfigError, match=overrides[-1][1:].split("=")[0].replace(".", r"\.")):
        evaluator_settings(ctx)
