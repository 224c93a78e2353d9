"""Every shipped config composes (lightning-hydra-template style); wrong types and keys fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from kdnas.api import compose

CONF = Path(__file__).resolve().parents[1] / "src" / "kdnas" / "conf"
SKIP_GROUPS = {"hydra"}


def group_options() -> list[tuple[str, str]]:
    out = []
    for path in sorted(CONF.rglob("*.yaml")):
        group = path.parent.relative_to(CONF).as_posix()
        if group != "." and group.split("/")[0] not in SKIP_GROUPS:
            out.append((group, path.stem))
    return out


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_option_composes(group: str, option: str) -> None:
    overrides = [f"{group}={option}"]
    if (group, option) == ("data", "imagefolder"):
        overrides.append("data.root=/tmp/x")
    if (group, option) == ("teacher", "checkpoint"):
        overrides.append("teacher.checkpoint=/tmp/x")
    cfg = compose("train", overrides)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def test_user_examples_compose() -> None:
    for path in sorted((CONF.parents[2].parent / "conf" / "experiment").glob("*.yaml")):
        text = path.read_text()
        assert "# @package _global_" in text, f"{path} must be a global experiment overlay"


@pytest.mark.parametrize("override", ["trainer.epochs=abc", "trainer.not_a_key=1", "data.val_fraction=many"])
def test_bad_values_fail_at_composition(override: str) -> None:
    key = override.split("=")[0].split(".")[-1]
    with pytest.raises(ConfigCompositionException) as info:
        compose("train", [override])
    assert key in str(info.value) + str(info.value.__cause__)


def test_teacher_recipe_is_a_nested_trainer() -> None:
    cfg = compose("train_teacher", ["trainer@teacher.trainer=cifar_240"])
    assert cfg.teacher.trainer.epochs == 240 and cfg.teacher.trainer.milestones == [150, 180, 210]
    assert cfg.trainer.epochs == 5  # the student's recipe is untouched
